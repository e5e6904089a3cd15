//! The join, as a pipeline: read the join message, authenticate once, authorize, audit the
//! decision, place the consultation, enter it, open media. Each step answers
//! `Result<_, JoinError>`, and `join` turns an error into what the client is told: a stable
//! code, and for a failure on our side (identity provider, booking system, SFU, audit disk)
//! a generic sentence, its detail in the log only. Nothing of the shared state (the
//! consultation's home in Redis, an SFU room) is claimed before the caller is authorized,
//! and no lock is held across a network call (crate::hub).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{BeforeJoin, Ending, Joined, Sink, refuse, send};
use crate::access::{self, AccessError, ClientInfo, Granted, role_name};
use crate::consultation::{Consultation, Entry, Outbound, rights_for};
use crate::identity::Identity;
use crate::policy::{Admission, Denial, Role};
use crate::protocol::{self, ClientMessage, Close, ServerMessage, VERSION};
use crate::state::AppState;

use super::frames::{FirstFrame, Incoming, read};

/// Why a join did not complete, as the client is told it.
#[derive(Debug)]
pub(super) enum JoinError {
    /// Before a well-formed join message (nothing it sent is trusted): counted and audited
    /// in summary, since anyone can open WebSockets and send junk.
    Unjoined {
        code: &'static str,
        appointment: Option<String>,
        message: String,
    },
    /// Refused after the decision was audited; `message` is safe to show.
    Refused { code: &'static str, message: String },
    /// Another replica runs the consultation now: come back through it.
    Reconnect,
    /// The transport ended (`None`) or broke: nothing to say.
    Gone(Ending),
}

impl JoinError {
    fn refused(code: &'static str, message: impl Into<String>) -> JoinError {
        JoinError::Refused {
            code,
            message: message.into(),
        }
    }

    /// An access decision's refusal, in words safe for the client.
    fn access(e: &AccessError) -> JoinError {
        e.log_detail("join");
        JoinError::refused(e.code(), e.public_message())
    }
}

/// What a well-formed join asks for.
struct JoinRequest {
    appointment: String,
    token: String,
    invite: Option<String>,
}

type Inbox = mpsc::UnboundedReceiver<Outbound>;

/// The first message must be a join, within the configured time; then the pipeline.
pub(super) async fn join(
    deps: &AppState,
    sink: &mut Sink,
    first: FirstFrame,
    client: ClientInfo,
    authenticated: Option<super::Authenticated>,
) -> Result<(Joined, Inbox), Ending> {
    let result = async {
        let request = read_join(first)?;
        admit(deps, sink, request, client.clone(), authenticated).await
    }
    .await;
    match result {
        Ok(joined) => Ok(joined),
        Err(JoinError::Unjoined {
            code,
            appointment,
            message,
        }) => {
            let refusal = BeforeJoin {
                client: &client,
                code,
                appointment: appointment.as_deref(),
            };
            Err(refusal.refuse(deps, sink, message).await)
        }
        Err(JoinError::Refused { code, message }) => Err(refuse(sink, code, message).await),
        Err(JoinError::Reconnect) => {
            let reconnect = ServerMessage::Reconnect { after_ms: 0 };
            send(sink, &reconnect).await;
            Err(Some(Close::after(&reconnect)))
        }
        Err(JoinError::Gone(ending)) => Err(ending),
    }
}

/// The first frame, read as a join message of this protocol version.
fn read_join(first: FirstFrame) -> Result<JoinRequest, JoinError> {
    let unjoined = |code, appointment: Option<&str>, message: &str| JoinError::Unjoined {
        code,
        appointment: appointment.map(str::to_owned),
        message: message.to_owned(),
    };
    let message = match first {
        FirstFrame::TimedOut => {
            return Err(unjoined("join_timeout", None, "send a join message first"));
        }
        FirstFrame::Frame(frame) => match read(frame) {
            Incoming::Closed => return Err(JoinError::Gone(None)),
            // A reset or an unreadable frame: the transport failed, nothing was asked.
            Incoming::Broken => return Err(JoinError::Gone(Some(Close::BROKEN_FRAME))),
            Incoming::TooLarge => {
                let msg = "the message is over the size limit";
                return Err(unjoined("message_too_large", None, msg));
            }
            // first_frame() skips these; a join is still owed.
            Incoming::Skip => {
                return Err(unjoined(
                    "join_first",
                    None,
                    "the first message must be a join",
                ));
            }
            Incoming::Bad(r) => return Err(unjoined(r.code, None, &r.message)),
            Incoming::Message(m) => m,
        },
    };
    let ClientMessage::Join {
        v,
        appointment,
        token,
        invite,
    } = message
    else {
        return Err(unjoined(
            "join_first",
            None,
            "the first message must be a join",
        ));
    };
    if v != VERSION {
        let msg = format!("this server speaks version {VERSION}");
        return Err(unjoined("unsupported_version", Some(&appointment), &msg));
    }
    Ok(JoinRequest {
        appointment,
        token,
        invite,
    })
}

/// From a well-formed join to the lobby or the call.
async fn admit(
    deps: &AppState,
    sink: &mut Sink,
    request: JoinRequest,
    client: ClientInfo,
    authenticated: Option<super::Authenticated>,
) -> Result<(Joined, Inbox), JoinError> {
    // Authenticate once: the invite check, the decision and its audit all use this identity.
    let identity = match authenticated {
        Some(verified) => verified,
        None => {
            let now = deps.clock.now().timestamp();
            deps.verifier.verify(&request.token, now).await
        }
    }
    .map_err(AccessError::from);
    let invite_slot = invite_slot(deps, &request, identity.as_ref().ok()).await;
    let result = match &identity {
        Ok(who) => {
            let decided =
                access::authorize_identity(deps, who.clone(), &request.appointment, invite_slot)
                    .await;
            precise_invite_refusal(decided, request.invite.is_some())
        }
        Err(e) => Err(e.clone()),
    };
    audit_decision(deps, &client, &request.appointment, &result, identity.ok()).await?;
    let granted = result.map_err(|e| JoinError::access(&e))?;
    spend_invite(deps, &request, invite_slot, &granted).await?;
    let consultation = place(deps, &granted).await?;
    enter(deps, sink, granted, consultation, client).await
}

/// The consultation's invite slot the caller's code opens, if any: honoured only while valid
/// and unused here (its owner may come back with a used one).
async fn invite_slot(
    deps: &AppState,
    request: &JoinRequest,
    caller: Option<&Identity>,
) -> Option<usize> {
    let code = request.invite.as_ref()?;
    let id = crate::booking::appointment_id(&request.appointment)?;
    let c = deps.hub.get(id).await?;
    c.invite_slot(code, deps.clock.now(), caller.map(|i| i.fhir_user.as_str()))
}

/// If the identity was fine but the invite was not, say so precisely.
fn precise_invite_refusal(
    result: Result<Granted, AccessError>,
    invited: bool,
) -> Result<Granted, AccessError> {
    match result {
        Err(AccessError::Denied(Denial::NotAParticipant)) if invited => {
            Err(AccessError::Denied(Denial::InviteInvalid))
        }
        other => other,
    }
}

/// Every decision is audited before it is acted on; no audit, no join.
async fn audit_decision(
    deps: &AppState,
    client: &ClientInfo,
    appointment: &str,
    result: &Result<Granted, AccessError>,
    identity: Option<Identity>,
) -> Result<(), JoinError> {
    access::record_decision(deps, "join", client, appointment, result, identity.as_ref())
        .await
        .map_err(|e| {
            warn!("the join's audit record could not be written: {e}");
            JoinError::refused(
                "audit_unavailable",
                "the audit log cannot be written; try again later",
            )
        })
}

/// A used invite is spent, even if the join fails later.
async fn spend_invite(
    deps: &AppState,
    request: &JoinRequest,
    slot: Option<usize>,
    granted: &Granted,
) -> Result<(), JoinError> {
    let (Some(code), Some(_)) = (&request.invite, slot) else {
        return Ok(());
    };
    if granted.access.role != Role::Interpreter {
        return Ok(());
    }
    let consumed = match deps.hub.get(&granted.appointment_id).await {
        Some(c) => c.consume_invite(code, deps.clock.now(), &granted.identity.fhir_user),
        None => false,
    };
    if consumed {
        Ok(())
    } else {
        let msg = "the invite was already used or expired";
        Err(JoinError::refused("invite_invalid", msg))
    }
}

/// The appointment's consultation on this replica, placed on an SFU node if it is new.
async fn place(deps: &AppState, granted: &Granted) -> Result<Arc<Consultation>, JoinError> {
    let kind = crate::rooms::room_kind(&granted.appointment, &deps.config.rooms);
    deps.hub
        .get_or_create(
            deps,
            &granted.appointment_id,
            kind,
            granted.access.closes_at,
        )
        .await
        .map_err(|e| {
            warn!(appointment = %granted.appointment_id, "placing the consultation failed: {e}");
            JoinError::refused("sfu_unavailable", "the media server is not reachable")
        })
}

/// Enter the consultation: the lobby, or the call with media opened.
async fn enter(
    deps: &AppState,
    sink: &mut Sink,
    granted: Granted,
    consultation: Arc<Consultation>,
    client: ClientInfo,
) -> Result<(Joined, Inbox), JoinError> {
    let (mailbox, inbox) = mpsc::unbounded_channel();
    let participant = granted.identity.fhir_user.clone();
    let role = granted.access.role;
    let direct = granted.access.admission == Admission::Direct;
    let grace = Duration::from_secs(deps.config.policy.reconnect_grace_s);
    let (entry, connection) =
        consultation.enter(&participant, role, direct, mailbox, deps.clock.now(), grace);
    let joined = Joined {
        granted,
        consultation,
        participant,
        role,
        connection,
        client,
    };
    match entry {
        Entry::Refused("handed_over") => return Err(JoinError::Reconnect),
        Entry::Refused(code) => {
            let _ = deps
                .audit
                .record(joined.event("join", "deny", Some(code), None))
                .await;
            let msg = "you cannot join this consultation now";
            return Err(JoinError::refused(code, msg));
        }
        Entry::Lobby => {
            let _ = deps
                .audit
                .record(joined.event("lobby", "ok", None, None))
                .await;
            let appointment = &joined.granted.appointment;
            let lobby = ServerMessage::Lobby {
                v: VERSION,
                role,
                participant: joined.participant.clone(),
                starts_at: appointment.start.map(protocol::utc),
                ends_at: appointment.end.map(protocol::utc),
            };
            // A client already gone is found gone by the session loop (its grace applies).
            send(sink, &lobby).await;
        }
        Entry::InCall => {
            let c = &joined.consultation;
            if let Err(refusal) = open_media(deps, c, &joined.participant, role).await {
                c.leave(&joined.participant, joined.connection);
                return Err(JoinError::refused(refusal.code, refusal.message));
            }
            let _ = deps
                .audit
                .record(joined.event("enter_call", "ok", None, None))
                .await;
            // `joined` goes through the mailbox, ahead of everything else of the call. If
            // this connection was replaced or removed meanwhile, the mailbox says so.
            c.welcome(&joined.participant, Some(joined.connection));
        }
    }
    info!(appointment = %joined.granted.appointment_id, participant = %joined.participant, role = role_name(role), "joined");
    Ok((joined, inbox))
}

/// Why a member's SFU session could not be opened, as the client is told it.
pub(super) struct MediaRefusal {
    pub code: &'static str,
    pub message: &'static str,
}

/// Open (or replace) the member's SFU session. A media server at capacity says so plainly
/// (`media_server_busy`, or `room_full` for a shared room that cannot mix one more voice);
/// any other failure is `sfu_unavailable`, its detail in the log only.
pub(super) async fn open_media(
    deps: &AppState,
    c: &Consultation,
    participant: &str,
    role: Role,
) -> Result<(), MediaRefusal> {
    let opened = c
        .node()
        .control
        .open_session(
            &c.room,
            participant,
            Some(role_name(role)),
            rights_for(role),
        )
        .await;
    match opened {
        Ok(opened) => {
            let now_s = deps.clock.now().timestamp().max(0) as u64;
            let ice = deps
                .config
                .ice_servers
                .servers_for(opened.turn.as_ref(), participant, now_s);
            c.media_opened(participant, opened.session, ice);
            Ok(())
        }
        Err(e) => {
            warn!(room = %c.room, "opening an SFU session failed: {e}");
            Err(match e.code.as_str() {
                "overloaded" => MediaRefusal {
                    code: "media_server_busy",
                    message: "the media server is at capacity; try again in a minute",
                },
                "room_full" => MediaRefusal {
                    code: "room_full",
                    message: "the room is full",
                },
                _ => MediaRefusal {
                    code: "sfu_unavailable",
                    message: "the media server is not reachable",
                },
            })
        }
    }
}
