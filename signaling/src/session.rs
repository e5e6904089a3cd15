//! One client's WebSocket session: join (identity, appointment, policy), then the lobby or
//! the call, relaying SDP to the room's SFU node and carrying out a host's controls
//! ([`host`]). Every decision and host action is audited before it is acknowledged. A
//! session the server ends gets a close frame whose code says why ([`Close`]).

mod chat;
mod flood;
mod frames;
mod host;
mod join;
#[cfg(test)]
mod join_tests;

pub use frames::{FirstFrame, first_frame};
pub(crate) use frames::{Incoming, linger, read, send_close};

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Message;
use futures_util::{SinkExt, StreamExt};
use metaclinic_protocol::control::api::IceCandidate;
use metaclinic_protocol::control::client::ApiError;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::access::{self, ClientInfo, Granted, role_name};
use crate::audit::AuditEvent;
use crate::connections::UnjoinedSlot;
use crate::consultation::{Consultation, Outbound};
use crate::policy::Role;
use crate::protocol::{self, ClientMessage, Close, Description, SdpKind, ServerMessage};
use crate::state::AppState;
use flood::{Budget, Spend};

/// Where a session writes: the client's WebSocket, or a pipe to the replica it is connected
/// to (crate::home).
pub type FrameSink = Pin<Box<dyn futures_util::Sink<Message, Error = axum::Error> + Send>>;
/// What a session reads: the same, the other way.
pub type FrameStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<Message, axum::Error>> + Send>>;
type Sink = FrameSink;

async fn send(sink: &mut Sink, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => sink.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn send_error(sink: &mut Sink, code: &str, message: impl Into<String>) -> bool {
    debug_assert!(
        protocol::errors::is_documented(code),
        "error code {code} is not in PROTOCOL.md"
    );
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
    /// Count and audit a refused message (in summary: a member can send junk as fast as
    /// anyone).
    async fn refused(&self, deps: &AppState, code: &'static str) {
        deps.metrics.ws_refused.with_label_values(&[code]).inc();
        let _ = deps
            .refusals
            .record(self.event("message", "deny", Some(code), None))
            .await;
    }

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
            count: None,
        }
    }
}

/// Refuse with `code`; the session ends, closed as the code says.
async fn refuse(sink: &mut Sink, code: &'static str, message: impl Into<String>) -> Ending {
    send_error(sink, code, message).await;
    Some(Close::after_error(code))
}

/// A refusal of a client that has not joined (nothing it sent is trusted yet).
struct BeforeJoin<'a> {
    client: &'a ClientInfo,
    code: &'static str,
    /// The appointment a well-formed join named.
    appointment: Option<&'a str>,
}

impl BeforeJoin<'_> {
    /// Count and audit it, in summary: anyone can open WebSockets and send junk.
    async fn audit(&self, deps: &AppState) {
        deps.metrics
            .ws_refused
            .with_label_values(&[self.code])
            .inc();
        let event = AuditEvent {
            client_ip: self.client.ip.clone(),
            appointment: self.appointment.map(access::appointment_ref),
            action: "join".into(),
            outcome: "deny".into(),
            reason: Some(self.code.into()),
            ..AuditEvent::default()
        };
        // The refusal stands whether or not the audit could be written.
        let _ = deps.refusals.record(event).await;
    }

    /// Audit it, tell the client, and end the session.
    async fn refuse(&self, deps: &AppState, sink: &mut Sink, message: impl Into<String>) -> Ending {
        self.audit(deps).await;
        refuse(sink, self.code, message).await
    }
}

/// How a session ends: closed by the server (with this close frame), or by the client or
/// a broken connection (`None`: nothing left to say).
type Ending = Option<Close>;

/// The join's token, already verified by whoever read the first frame (crate::home): the
/// join then verifies it no more.
pub type Authenticated = Result<crate::identity::Identity, crate::identity::AuthError>;

/// Serve one client from its first frame on, here: this replica runs (or now opened) the
/// consultation it joins. `unjoined` is the client's place among its address's unjoined
/// WebSockets (crate::connections), given back once it has joined.
pub async fn run(
    deps: AppState,
    first: FirstFrame,
    mut stream: FrameStream,
    mut sink: FrameSink,
    client: ClientInfo,
    unjoined: Option<UnjoinedSlot>,
    authenticated: Option<Authenticated>,
) {
    deps.metrics.ws_sessions.inc();
    let ending = match join::join(&deps, &mut sink, first, client, authenticated).await {
        Ok((joined, inbox)) => {
            drop(unjoined);
            serve(&deps, &mut sink, &mut stream, joined, inbox).await
        }
        Err(ending) => ending,
    };
    if let Some(close) = ending {
        send_close(&mut sink, close).await;
        linger(&mut stream, close).await;
    }
    let _ = sink.close().await;
    deps.metrics.ws_sessions.dec();
}

async fn serve(
    deps: &AppState,
    sink: &mut Sink,
    stream: &mut FrameStream,
    joined: Joined,
    mut inbox: mpsc::UnboundedReceiver<Outbound>,
) -> Ending {
    let l = &deps.config.limits;
    let mut budget = Budget::new(
        l.messages_per_second,
        l.message_burst,
        l.bytes_per_second,
        l.byte_burst,
        Instant::now(),
    );
    let mut left = false;
    let ending = loop {
        tokio::select! {
            frame = stream.next() => {
                let size = frames::size(&frame);
                let message = match read(frame) {
                    Incoming::Closed => break None,
                    Incoming::Broken => break Some(Close::BROKEN_FRAME),
                    Incoming::Skip => continue,
                    Incoming::TooLarge => {
                        let code = "message_too_large";
                        joined.refused(deps, code).await;
                        break refuse(sink, code, "the message is over the size limit").await;
                    }
                    Incoming::Bad(r) => Err(r),
                    Incoming::Message(m) => Ok(m),
                };
                // Refused frames count against the budget too: a flood of junk is still a
                // flood.
                match budget.spend(size, Instant::now()) {
                    Spend::Taken => {}
                    Spend::Dropped { first } => {
                        joined.refused(deps, "rate_limited").await;
                        if first {
                            send_error(sink, "rate_limited", "slow down").await;
                        }
                        continue;
                    }
                    Spend::Flooding => {
                        joined.refused(deps, "flooding").await;
                        break refuse(sink, "flooding", "too many messages; disconnected").await;
                    }
                }
                match message {
                    Err(r) => {
                        joined.refused(deps, r.code).await;
                        send_error(sink, r.code, r.message).await;
                    }
                    Ok(m) => {
                        if let Flow::Leave = handle(deps, sink, &joined, m).await {
                            left = true;
                            break Some(Close::LEFT);
                        }
                    }
                }
            }
            out = inbox.recv() => match out {
                Some(Outbound::Message(m)) => {
                    if !send(sink, &m).await {
                        break None;
                    }
                }
                Some(Outbound::Close(m)) => {
                    send(sink, &m).await;
                    break Some(Close::after(&m));
                }
                // The consultation always says why it lets a connection go.
                None => break Some(Close::INTERNAL),
            }
        }
    };
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
    ending
}

enum Flow {
    Continue,
    Leave,
}

async fn handle(deps: &AppState, sink: &mut Sink, j: &Joined, msg: ClientMessage) -> Flow {
    let c = &j.consultation;
    let in_call = c.presence(&j.participant) == Some(crate::consultation::Presence::InCall);
    let media = matches!(
        msg,
        ClientMessage::Sdp { .. }
            | ClientMessage::Ice { .. }
            | ClientMessage::VideoPreference { .. }
    );
    if media && !in_call {
        send_error(sink, "not_in_call", "wait to be admitted").await;
        return Flow::Continue;
    }
    match msg {
        ClientMessage::Join { .. } => {
            send_error(sink, "already_joined", "this session has joined").await;
        }
        ClientMessage::Ping => {
            send(sink, &ServerMessage::Pong).await;
        }
        ClientMessage::Leave => return Flow::Leave,
        ClientMessage::Sdp { description } => {
            relay_sdp(sink, c, &j.participant, description).await;
        }
        ClientMessage::Ice { candidate } => {
            let candidate = match serde_json::from_value::<IceCandidate>(candidate) {
                Ok(candidate) => candidate,
                Err(e) => {
                    send_error(sink, "bad_message", e.to_string()).await;
                    return Flow::Continue;
                }
            };
            // An empty `candidate` (end of candidates) is accepted and changes nothing.
            let added = c
                .node()
                .control
                .candidate(&c.room, &j.participant, &candidate)
                .await;
            if let Err(e) = added {
                sfu_refused(sink, c, e).await;
            }
        }
        ClientMessage::VideoPreference {
            track,
            max_quality,
            pinned,
        } => {
            let Some(track) = metaclinic_protocol::ids::TrackId::parse(&track) else {
                let msg = "track must be a track id from track_published";
                send_error(sink, "bad_message", msg).await;
                return Flow::Continue;
            };
            let preference = metaclinic_protocol::control::api::VideoPreference {
                track,
                max_quality: max_quality.map(Into::into),
                pinned,
            };
            // Always the sender's own session: a client cannot set another's preferences.
            let set = c
                .node()
                .control
                .set_video_preference(&c.room, &j.participant, &preference)
                .await;
            if let Err(e) = set {
                sfu_refused(sink, c, e).await;
            }
        }
        m @ (ClientMessage::Chat { .. } | ClientMessage::AllowChat { .. }) => {
            chat::handle(deps, sink, j, m).await;
        }
        host_control => host::control(deps, sink, j, in_call, host_control).await,
    }
    Flow::Continue
}

/// The SFU refused what the client asked of its own session: say so with a code of
/// PROTOCOL.md. The client's own mistakes pass through; the SFU's failures are
/// `sfu_unavailable` (the detail goes to the log, not to the client); a session the SFU
/// no longer has is `media_lost`.
async fn sfu_refused(sink: &mut Sink, c: &Consultation, e: ApiError) {
    let code = match e.code.as_str() {
        "glare" => "glare",
        "invalid_sdp" => "invalid_sdp",
        "no_pending_offer" => "no_pending_offer",
        "invalid_candidate" => "invalid_candidate",
        "track_not_found" => "track_not_found",
        "bad_request" | "payload_too_large" => "bad_message",
        "participant_not_found" | "room_not_found" => "media_lost",
        _ => "sfu_unavailable",
    };
    let message = match code {
        "sfu_unavailable" => {
            warn!(room = %c.room, status = e.status, code = %e.code, "the SFU refused a client's request");
            "the media server did not carry this out".to_owned()
        }
        "media_lost" => "the media connection was lost; rejoin".to_owned(),
        _ => e.message,
    };
    send_error(sink, code, message).await;
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
            let description = Description {
                kind: SdpKind::Answer,
                sdp: answer,
            };
            send(sink, &ServerMessage::Sdp { description }).await;
        }
        Ok(None) => {}
        // glare, invalid_sdp, no_pending_offer: the client can act on these codes.
        Err(e) => sfu_refused(sink, c, e).await,
    }
}
