//! A host's controls over the consultation (PROTOCOL.md, "Host controls"): each is checked
//! by the consultation (a host in the call, someone else, where the action applies),
//! carried out at the SFU where it concerns media, audited, and refused with a code.

use std::time::Duration;

use metaclinic_protocol::media::MediaKind as SfuMediaKind;
use tracing::warn;

use super::join::open_media;
use super::{Joined, Sink, send, send_error};
use crate::consultation::ActionError;
use crate::policy::Role;
use crate::protocol::{ClientMessage, EndReason, MediaKind, ServerMessage};
use crate::state::AppState;

/// Carry out a host control; `msg` is one of them.
pub(super) async fn control(
    deps: &AppState,
    sink: &mut Sink,
    j: &Joined,
    in_call: bool,
    msg: ClientMessage,
) {
    let c = &j.consultation;
    match msg {
        ClientMessage::Admit { participant } => {
            let now = deps.clock.now();
            match c.admit(&j.participant, &participant, now) {
                Ok((role, waited)) => {
                    let opened = open_media(deps, c, &participant, role).await;
                    if let Err(refusal) = opened {
                        c.back_to_lobby(&participant, now);
                        send_error(sink, refusal.code, refusal.message).await;
                    } else {
                        if let Some(w) = waited {
                            deps.metrics
                                .lobby_wait
                                .observe(w.num_milliseconds() as f64 / 1000.0);
                        }
                        done(deps, sink, j, "admit", Ok(()), &participant).await;
                        // Their `joined`, then everyone's `members_changed`: the order is
                        // the consultation's (crate::consultation::entry).
                        if !c.welcome(&participant, None) && !c.has_member(&participant) {
                            // They left while their session opened: it is nobody's now.
                            let _ = c.node().control.close_session(&c.room, &participant).await;
                        }
                    }
                }
                Err(e) => done(deps, sink, j, "admit", Err(e), &participant).await,
            }
        }
        ClientMessage::Deny { participant } => {
            let r = c.deny(&j.participant, &participant).map(|_| ());
            done(deps, sink, j, "deny", r, &participant).await;
        }
        ClientMessage::ReturnToLobby { participant } => {
            let r = c.return_to_lobby(&j.participant, &participant, deps.clock.now());
            if r.is_ok() {
                let _ = c.node().control.close_session(&c.room, &participant).await;
            }
            let r = r.map(|_| ());
            done(deps, sink, j, "return_to_lobby", r, &participant).await;
        }
        ClientMessage::Mute {
            participant,
            kind,
            muted,
        } => {
            let r = match c.check_mute(&j.participant, &participant) {
                Ok(_) => {
                    let sfu_kind = match kind {
                        MediaKind::Audio => SfuMediaKind::Audio,
                        MediaKind::Video => SfuMediaKind::Video,
                    };
                    let applied = c
                        .node()
                        .control
                        .set_muted(&c.room, &participant, sfu_kind, muted)
                        .await;
                    if let Err(e) = applied {
                        warn!(room = %c.room, "muting at the SFU failed: {e}");
                        send_error(
                            sink,
                            "sfu_unavailable",
                            "the media server did not apply the mute",
                        )
                        .await;
                        return;
                    }
                    c.send(&participant, ServerMessage::MutedByHost { kind, muted });
                    Ok(())
                }
                Err(e) => Err(e),
            };
            let action = if muted { "mute" } else { "unmute" };
            done(deps, sink, j, action, r, &participant).await;
        }
        ClientMessage::Remove { participant } => {
            let r = c.remove(&j.participant, &participant);
            if let Ok((_, true)) = r {
                let _ = c.node().control.close_session(&c.room, &participant).await;
            }
            done(deps, sink, j, "remove", r.map(|_| ()), &participant).await;
        }
        ClientMessage::ShareVitals { companions } => {
            let action = if companions {
                "share_vitals"
            } else {
                "unshare_vitals"
            };
            if j.role != Role::Host || !in_call {
                done(deps, sink, j, action, Err(ActionError::NotHost), "").await;
                return;
            }
            let applied = c
                .node()
                .control
                .set_vitals_sharing(&c.room, companions)
                .await;
            if let Err(e) = applied {
                warn!(room = %c.room, "vitals sharing at the SFU failed: {e}");
                send_error(sink, "sfu_unavailable", "the media server did not apply it").await;
                return;
            }
            done(deps, sink, j, action, Ok(()), "").await;
        }
        ClientMessage::End => {
            if j.role != Role::Host || !in_call {
                done(deps, sink, j, "end", Err(ActionError::NotHost), "").await;
                return;
            }
            deps.metrics
                .host_actions
                .with_label_values(&["end", "ok"])
                .inc();
            deps.hub
                .finish(deps, c, EndReason::HostEnded, Some(&j.participant))
                .await;
        }
        ClientMessage::Extend { minutes } => {
            let max = deps.config.policy.max_extension_min;
            let r = c.extend(&j.participant, minutes, max);
            done(deps, sink, j, "extend", r.map(|_| ()), "").await;
        }
        ClientMessage::InviteInterpreter => {
            let slots = crate::policy::unassigned_translator_slots(&j.granted.appointment);
            let ttl = Duration::from_secs(deps.config.policy.invite_ttl_min * 60);
            match c.invite(&j.participant, &slots, ttl, deps.clock.now()) {
                Ok((code, expires_at)) => {
                    done(deps, sink, j, "invite_interpreter", Ok(()), "").await;
                    let expires_at = expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    send(sink, &ServerMessage::Invite { code, expires_at }).await;
                }
                Err(e) => done(deps, sink, j, "invite_interpreter", Err(e), "").await,
            }
        }
        other => {
            // A broken invariant, not the client: the session only passes host controls.
            debug_assert!(false, "not a host control: {}", other.type_name());
        }
    }
}

/// Audit and count a host action, and tell the host if it was refused.
pub(super) async fn done(
    deps: &AppState,
    sink: &mut Sink,
    j: &Joined,
    action: &str,
    r: Result<(), ActionError>,
    target: &str,
) {
    let target = (!target.is_empty()).then_some(target);
    let (outcome, reason) = match &r {
        Ok(()) => ("ok", None),
        Err(e) => ("deny", Some(e.code())),
    };
    deps.metrics
        .host_actions
        .with_label_values(&[action, outcome])
        .inc();
    let _ = deps
        .audit
        .record(j.event(action, outcome, reason, target))
        .await;
    if let Err(e) = r {
        send_error(sink, e.code(), e.to_string()).await;
    }
}
