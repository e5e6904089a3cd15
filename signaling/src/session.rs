//! One client's WebSocket session: join (identity, appointment, policy), then the lobby or
//! the call, relaying SDP to the room's SFU node and carrying out a host's controls. Every
//! decision and host action is audited before it is acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;

use axum::extract::ws::Message;
use futures_util::{SinkExt, StreamExt};
use metaclinic_sfu::control::api::IceCandidate;
use metaclinic_sfu::media::MediaKind as SfuMediaKind;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::access::{self, ClientInfo, Granted, role_name};
use crate::audit::AuditEvent;
use crate::consultation::{ActionError, Consultation, Entry, Outbound, rights_for};
use crate::policy::{Admission, Role};
use crate::protocol::{
    ClientMessage, Description, EndReason, MediaKind, SdpKind, ServerMessage, VERSION,
};
use crate::state::AppState;

/// A token bucket per connection: floods are answered, then cut off.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    refused: u32,
}

/// Messages refused in a row before the connection is closed.
const MAX_REFUSED: u32 = 100;

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        RateLimit {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: Instant::now(),
            refused: 0,
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// Why an incoming frame is not a message we act on.
pub(crate) enum Incoming {
    Message(ClientMessage),
    /// Answer with this error code and carry on.
    Bad(&'static str, String),
    Closed,
}

pub(crate) fn parse(frame: Option<Result<Message, axum::Error>>) -> Incoming {
    let text = match frame {
        None | Some(Ok(Message::Close(_))) => return Incoming::Closed,
        Some(Err(e)) => {
            // Oversized frames end here too: tungstenite refuses them before we see them.
            return Incoming::Bad("message_too_large_or_broken", e.to_string());
        }
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Binary(_))) => {
            return Incoming::Bad(
                "bad_message",
                "binary messages are not part of the protocol".into(),
            );
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Incoming::Bad("", String::new()),
    };
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => return Incoming::Bad("malformed_json", "the message is not JSON".into()),
    };
    match serde_json::from_value::<ClientMessage>(value) {
        Ok(m) => Incoming::Message(m),
        Err(e) if e.to_string().contains("unknown variant") => {
            Incoming::Bad("unknown_type", e.to_string())
        }
        Err(e) => Incoming::Bad("bad_message", e.to_string()),
    }
}

/// Where a session writes: the client's WebSocket, or a pipe to the replica it is connected
/// to (crate::home).
pub type FrameSink = Pin<Box<dyn futures_util::Sink<Message, Error = axum::Error> + Send>>;
/// What a session reads: the same, the other way.
pub type FrameStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<Message, axum::Error>> + Send>>;
type Sink = FrameSink;

/// The client's first frame (pings skipped), or none within the join timeout.
pub enum FirstFrame {
    TimedOut,
    Frame(Option<Result<Message, axum::Error>>),
}

impl FirstFrame {
    /// The appointment a well-formed join asks for (where its consultation runs decides
    /// where the session runs).
    pub fn joins(&self) -> Option<String> {
        let FirstFrame::Frame(Some(Ok(Message::Text(t)))) = self else {
            return None;
        };
        match serde_json::from_str::<ClientMessage>(t) {
            Ok(ClientMessage::Join { appointment, .. }) => {
                crate::booking::appointment_id(&appointment).map(str::to_owned)
            }
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            FirstFrame::Frame(Some(Ok(Message::Text(t)))) => Some(t.as_str()),
            _ => None,
        }
    }
}

/// Read the first frame a client sends, skipping pings, within `timeout`.
pub async fn first_frame(stream: &mut FrameStream, timeout: Duration) -> FirstFrame {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return FirstFrame::TimedOut,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(frame) => return FirstFrame::Frame(frame),
        }
    }
}

async fn send(sink: &mut Sink, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => sink.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn send_error(sink: &mut Sink, code: &str, message: impl Into<String>) -> bool {
    send(
        sink,
        &ServerMessage::Error {
            code: code.to_owned(),
            message: message.into(),
        },
    )
    .await
}

/// What this session knows about its member, for actions and the audit log.
struct Joined {
    granted: Granted,
    consultation: Arc<Consultation>,
    participant: String,
    role: Role,
    connection: u64,
    client: ClientInfo,
}

impl Joined {
    fn event(
        &self,
        action: &str,
        outcome: &str,
        reason: Option<&str>,
        target: Option<&str>,
    ) -> AuditEvent {
        AuditEvent {
            fhir_user: Some(self.participant.clone()),
            jti: self.granted.identity.jti.clone(),
            client_ip: self.client.ip.clone(),
            user_agent: self.client.user_agent.clone(),
            appointment: Some(format!("Appointment/{}", self.granted.appointment_id)),
            room: Some(self.consultation.room.clone()),
            role: Some(role_name(self.role).to_owned()),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            reason: reason.map(str::to_owned),
            target: target.map(str::to_owned),
        }
    }
}

/// Serve one client from its first frame on, here: this replica runs (or now opened) the
/// consultation it joins.
pub async fn run(
    deps: AppState,
    first: FirstFrame,
    mut stream: FrameStream,
    mut sink: FrameSink,
    client: ClientInfo,
) {
    deps.metrics.ws_sessions.inc();
    if let Some(joined) = join(&deps, &mut sink, first, client).await {
        serve(&deps, &mut sink, &mut stream, joined.0, joined.1).await;
    }
    let _ = sink.close().await;
    deps.metrics.ws_sessions.dec();
}

/// The first message must be a join, within the configured time.
async fn join(
    deps: &AppState,
    sink: &mut Sink,
    first: FirstFrame,
    client: ClientInfo,
) -> Option<(Joined, mpsc::UnboundedReceiver<Outbound>)> {
    let first = match first {
        FirstFrame::TimedOut => {
            send_error(sink, "join_timeout", "send a join message first").await;
            return None;
        }
        FirstFrame::Frame(frame) => match parse(frame) {
            Incoming::Closed => return None,
            Incoming::Bad(code, msg) => {
                let code = if code.is_empty() { "bad_message" } else { code };
                deps.metrics.ws_refused.with_label_values(&[code]).inc();
                send_error(sink, code, msg).await;
                return None;
            }
            Incoming::Message(m) => m,
        },
    };
    let ClientMessage::Join {
        v,
        appointment,
        token,
        invite,
    } = first
    else {
        send_error(sink, "join_first", "the first message must be a join").await;
        return None;
    };
    if v != VERSION {
        send_error(
            sink,
            "unsupported_version",
            format!("this server speaks version {VERSION}"),
        )
        .await;
        return None;
    }
    // An invite is honoured only while valid and unused in this appointment's consultation.
    let appointment_id = crate::booking::appointment_id(&appointment).map(str::to_owned);
    let mut invite_slot = None;
    if let (Some(code), Some(id)) = (&invite, &appointment_id)
        && let Some(c) = deps.hub.get(id).await
    {
        // Who asks decides whether a used invite still opens: its owner may come back.
        let caller = deps
            .verifier
            .verify(&token, deps.clock.now().timestamp())
            .await
            .ok()
            .map(|i| i.fhir_user);
        invite_slot = c.invite_slot(code, deps.clock.now(), caller.as_deref());
    }
    let result = access::authorize(deps, &token, &appointment, invite_slot).await;
    // If the identity was fine but the invite was not, say so precisely.
    let result = match result {
        Err(access::AccessError::Denied(crate::policy::Denial::NotAParticipant))
            if invite.is_some() =>
        {
            Err(access::AccessError::Denied(
                crate::policy::Denial::InviteInvalid,
            ))
        }
        other => other,
    };
    let identity = match &result {
        Ok(g) => Some(g.identity.clone()),
        Err(_) => deps
            .verifier
            .verify(&token, deps.clock.now().timestamp())
            .await
            .ok(),
    };
    if access::record_decision(
        deps,
        "join",
        &client,
        &appointment,
        &result,
        identity.as_ref(),
    )
    .await
    .is_err()
    {
        send_error(
            sink,
            "audit_unavailable",
            "the audit log cannot be written; try again later",
        )
        .await;
        return None;
    }
    let granted = match result {
        Ok(g) => g,
        Err(e) => {
            send_error(sink, e.code(), e.to_string()).await;
            return None;
        }
    };
    // A used invite is spent, even if the join fails later.
    if let (Some(code), Some(_)) = (&invite, invite_slot)
        && granted.access.role == Role::Interpreter
    {
        let consumed = match deps.hub.get(&granted.appointment_id).await {
            Some(c) => c.consume_invite(code, deps.clock.now(), &granted.identity.fhir_user),
            None => false,
        };
        if !consumed {
            send_error(
                sink,
                "invite_invalid",
                "the invite was already used or expired",
            )
            .await;
            return None;
        }
    }
    let consultation = match deps
        .hub
        .get_or_create(
            deps,
            &granted.appointment_id,
            crate::rooms::room_kind(&granted.appointment, &deps.config.rooms),
            granted.access.closes_at,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            send_error(sink, "sfu_unavailable", e.to_string()).await;
            return None;
        }
    };
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
        Entry::Refused("handed_over") => {
            send(sink, &ServerMessage::Reconnect { after_ms: 0 }).await;
            return None;
        }
        Entry::Refused(code) => {
            let _ = deps
                .audit
                .record(joined.event("join", "deny", Some(code), None))
                .await;
            send_error(sink, code, "you cannot join this consultation now").await;
            return None;
        }
        Entry::Lobby => {
            let _ = deps
                .audit
                .record(joined.event("lobby", "ok", None, None))
                .await;
            send(
                sink,
                &ServerMessage::Lobby {
                    v: VERSION,
                    role,
                    participant: joined.participant.clone(),
                },
            )
            .await;
        }
        Entry::InCall => {
            if !open_media(deps, &joined.consultation, &joined.participant, role).await {
                send_error(sink, "sfu_unavailable", "the media server is not reachable").await;
                joined
                    .consultation
                    .leave(&joined.participant, joined.connection);
                return None;
            }
            let _ = deps
                .audit
                .record(joined.event("enter_call", "ok", None, None))
                .await;
            for msg in joined
                .consultation
                .welcome_messages(&joined.participant, role)
            {
                send(sink, &msg).await;
            }
        }
    }
    info!(appointment = %joined.granted.appointment_id, participant = %joined.participant, role = role_name(role), "joined");
    Some((joined, inbox))
}

/// Open (or replace) the member's SFU session.
async fn open_media(deps: &AppState, c: &Consultation, participant: &str, role: Role) -> bool {
    let _ = deps;
    match c
        .node()
        .control
        .open_session(
            &c.room,
            participant,
            Some(role_name(role)),
            rights_for(role),
        )
        .await
    {
        Ok(opened) => {
            c.media_opened(participant, opened.session);
            true
        }
        Err(e) => {
            warn!(room = %c.room, "opening an SFU session failed: {e}");
            false
        }
    }
}

async fn serve(
    deps: &AppState,
    sink: &mut Sink,
    stream: &mut FrameStream,
    joined: Joined,
    mut inbox: mpsc::UnboundedReceiver<Outbound>,
) {
    let mut limit = RateLimit::new(
        deps.config.limits.messages_per_second,
        deps.config.limits.message_burst,
    );
    let mut left = false;
    loop {
        tokio::select! {
            frame = stream.next() => {
                let msg = match parse(frame) {
                    Incoming::Closed => break,
                    Incoming::Bad("", _) => continue,
                    Incoming::Bad(code, text) => {
                        deps.metrics.ws_refused.with_label_values(&[code]).inc();
                        if code == "message_too_large_or_broken" {
                            send_error(sink, "message_too_large", text).await;
                            break;
                        }
                        if !limit.allow() {
                            if limit.refused > MAX_REFUSED { break; }
                            continue;
                        }
                        send_error(sink, code, text).await;
                        continue;
                    }
                    Incoming::Message(m) => m,
                };
                if !limit.allow() {
                    deps.metrics.ws_refused.with_label_values(&["rate_limited"]).inc();
                    if limit.refused > MAX_REFUSED {
                        send_error(sink, "flooding", "too many messages; disconnected").await;
                        break;
                    }
                    if limit.refused == 1 {
                        send_error(sink, "rate_limited", "slow down").await;
                    }
                    continue;
                }
                match handle(deps, sink, &joined, msg).await {
                    Flow::Continue => {}
                    Flow::Leave => { left = true; break; }
                }
            }
            out = inbox.recv() => match out {
                Some(Outbound::Message(m)) => { if !send(sink, &m).await { break; } }
                Some(Outbound::Close(m)) => { send(sink, &m).await; break; }
                None => break,
            }
        }
    }
    let now = deps.clock.now();
    let c = &joined.consultation;
    let was_in_call = if left {
        c.leave(&joined.participant, joined.connection)
    } else {
        c.disconnect(&joined.participant, joined.connection, now)
    };
    if was_in_call && c.ended().is_none() {
        let _ = c
            .node()
            .control
            .close_session(&c.room, &joined.participant)
            .await;
    }
    let _ = deps
        .audit
        .record(joined.event(
            "leave",
            "ok",
            Some(if left { "left" } else { "disconnected" }),
            None,
        ))
        .await;
    debug!(participant = %joined.participant, "session ended");
}

enum Flow {
    Continue,
    Leave,
}

async fn handle(deps: &AppState, sink: &mut Sink, j: &Joined, msg: ClientMessage) -> Flow {
    let c = &j.consultation;
    let in_call = c.presence(&j.participant) == Some(crate::consultation::Presence::InCall);
    match msg {
        ClientMessage::Join { .. } => {
            send_error(sink, "already_joined", "this session has joined").await;
        }
        ClientMessage::Ping => {
            send(sink, &ServerMessage::Pong).await;
        }
        ClientMessage::Leave => return Flow::Leave,
        ClientMessage::Sdp { description } => {
            if !in_call {
                send_error(sink, "not_in_call", "wait to be admitted").await;
                return Flow::Continue;
            }
            relay_sdp(sink, c, &j.participant, description).await;
        }
        ClientMessage::Ice { candidate } => {
            if !in_call {
                send_error(sink, "not_in_call", "wait to be admitted").await;
                return Flow::Continue;
            }
            match serde_json::from_value::<IceCandidate>(candidate) {
                Ok(cand) => {
                    if let Err(e) = c
                        .node()
                        .control
                        .candidate(&c.room, &j.participant, &cand)
                        .await
                    {
                        send_error(sink, &e.code, e.message).await;
                    }
                }
                Err(e) => {
                    send_error(sink, "bad_message", e.to_string()).await;
                }
            }
        }
        ClientMessage::VideoPreference {
            track,
            max_quality,
            pinned,
        } => {
            if !in_call {
                send_error(sink, "not_in_call", "wait to be admitted").await;
                return Flow::Continue;
            }
            let Some(track) = metaclinic_sfu::ids::TrackId::parse(&track) else {
                send_error(
                    sink,
                    "bad_message",
                    "track must be a track id from track_published",
                )
                .await;
                return Flow::Continue;
            };
            let preference = metaclinic_sfu::control::api::VideoPreference {
                track,
                max_quality,
                pinned,
            };
            // Always the sender's own session: a client cannot set another's preferences.
            if let Err(e) = c
                .node()
                .control
                .set_video_preference(&c.room, &j.participant, &preference)
                .await
            {
                send_error(sink, &e.code, e.message).await;
            }
        }
        ClientMessage::Admit { participant } => {
            let now = deps.clock.now();
            let result = c.admit(&j.participant, &participant, now);
            match result {
                Ok((role, waited)) => {
                    if open_media(deps, c, &participant, role).await {
                        if let Some(w) = waited {
                            deps.metrics
                                .lobby_wait
                                .observe(w.num_milliseconds() as f64 / 1000.0);
                        }
                        host_done(deps, sink, j, "admit", Ok(()), &participant).await;
                        for msg in c.welcome_messages(&participant, role) {
                            c.send(&participant, msg);
                        }
                    } else {
                        c.back_to_lobby(&participant, now);
                        send_error(sink, "sfu_unavailable", "the media server is not reachable")
                            .await;
                    }
                }
                Err(e) => host_done(deps, sink, j, "admit", Err(e), &participant).await,
            }
        }
        ClientMessage::Deny { participant } => {
            let r = c.deny(&j.participant, &participant).map(|_| ());
            host_done(deps, sink, j, "deny", r, &participant).await;
        }
        ClientMessage::ReturnToLobby { participant } => {
            let r = c.return_to_lobby(&j.participant, &participant, deps.clock.now());
            if r.is_ok() {
                let _ = c.node().control.close_session(&c.room, &participant).await;
            }
            host_done(
                deps,
                sink,
                j,
                "return_to_lobby",
                r.map(|_| ()),
                &participant,
            )
            .await;
        }
        ClientMessage::Mute {
            participant,
            kind,
            muted,
        } => {
            let r = c.check_mute(&j.participant, &participant);
            let r = match r {
                Ok(_) => {
                    let sfu_kind = match kind {
                        MediaKind::Audio => SfuMediaKind::Audio,
                        MediaKind::Video => SfuMediaKind::Video,
                    };
                    match c
                        .node()
                        .control
                        .set_muted(&c.room, &participant, sfu_kind, muted)
                        .await
                    {
                        Ok(()) => {
                            c.send(&participant, ServerMessage::MutedByHost { kind, muted });
                            Ok(())
                        }
                        Err(e) => {
                            warn!(room = %c.room, "muting at the SFU failed: {e}");
                            send_error(
                                sink,
                                "sfu_unavailable",
                                "the media server did not apply the mute",
                            )
                            .await;
                            return Flow::Continue;
                        }
                    }
                }
                Err(e) => Err(e),
            };
            host_done(
                deps,
                sink,
                j,
                if muted { "mute" } else { "unmute" },
                r,
                &participant,
            )
            .await;
        }
        ClientMessage::Remove { participant } => {
            let r = c.remove(&j.participant, &participant);
            if let Ok((_, true)) = r {
                let _ = c.node().control.close_session(&c.room, &participant).await;
            }
            host_done(deps, sink, j, "remove", r.map(|_| ()), &participant).await;
        }
        ClientMessage::End => {
            if j.role != Role::Host || !in_call {
                host_done(deps, sink, j, "end", Err(ActionError::NotHost), "").await;
                return Flow::Continue;
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
            let r = c.extend(
                &j.participant,
                minutes,
                deps.config.policy.max_extension_min,
            );
            host_done(deps, sink, j, "extend", r.map(|_| ()), "").await;
        }
        ClientMessage::InviteInterpreter => {
            let slots = crate::policy::unassigned_translator_slots(&j.granted.appointment);
            let ttl = Duration::from_secs(deps.config.policy.invite_ttl_min * 60);
            match c.invite(&j.participant, &slots, ttl, deps.clock.now()) {
                Ok((code, expires_at)) => {
                    host_done(deps, sink, j, "invite_interpreter", Ok(()), "").await;
                    send(
                        sink,
                        &ServerMessage::Invite {
                            code,
                            expires_at: expires_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        },
                    )
                    .await;
                }
                Err(e) => host_done(deps, sink, j, "invite_interpreter", Err(e), "").await,
            }
        }
    }
    Flow::Continue
}

/// Audit and count a host action, and tell the host if it was refused.
async fn host_done(
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

/// The client's offer goes to the SFU and its answer comes back; the client's answer to the
/// SFU's offer goes to the SFU.
async fn relay_sdp(sink: &mut Sink, c: &Consultation, participant: &str, d: Description) {
    let result = match d.kind {
        SdpKind::Offer => c
            .node()
            .control
            .offer(&c.room, participant, d.sdp)
            .await
            .map(Some),
        SdpKind::Answer => c
            .node()
            .control
            .answer(&c.room, participant, d.sdp)
            .await
            .map(|_| None),
    };
    match result {
        Ok(Some(answer)) => {
            send(
                sink,
                &ServerMessage::Sdp {
                    description: Description {
                        kind: SdpKind::Answer,
                        sdp: answer,
                    },
                },
            )
            .await;
        }
        Ok(None) => {}
        Err(e) => {
            // glare, invalid_sdp, no_pending_offer: the client can act on these codes.
            let code = if e.status == 0 {
                "sfu_unavailable".to_owned()
            } else {
                e.code.clone()
            };
            send_error(sink, &code, e.message).await;
        }
    }
}
