//! Where a consultation runs. Each appointment's consultation (lobby, members, host
//! controls) lives in the memory of one signaling replica at a time, its *home*, so its
//! decisions need no cross-replica locking. A client may connect to any replica (its
//! *edge*): when the consultation's home is elsewhere, the edge pipes the client's
//! WebSocket frames to the home and the home's answers back, and the session runs at the
//! home as if the client were connected there.
//!
//! The home keeps a lease on the consultation and stores a [`Snapshot`] of what must outlive
//! it; a replica that dies or drains loses its leases, the next join claims the
//! consultation elsewhere and continues it from the snapshot (clients are told to
//! reconnect, admitted members come back into the call).
//!
//! One interface, two implementations: [`local::LocalHomes`] (one process: every
//! consultation is at home here) and [`redis::RedisHomes`] (leases, snapshots and pipes in
//! Redis).
//!
//! [`Snapshot`]: crate::consultation::snapshot::Snapshot

pub mod local;
pub mod redis;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::access::ClientInfo;
use crate::audit::AuditEvent;
use crate::connections::UnjoinedSlot;
use crate::protocol::{Close, ServerMessage};
use crate::session::{self, FirstFrame, FrameSink, FrameStream, Incoming};
use crate::state::AppState;

/// Where an appointment's consultation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    Here,
    /// On the replica with this id.
    Elsewhere(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HomeError {
    #[error("the shared state (Redis) is unavailable: {0}")]
    Store(String),
    #[error("the replica running the consultation does not answer")]
    HomeGone,
}

/// One frame of a piped client connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PipeOp {
    /// Edge to home: a client connected; its first frame.
    Open {
        client: ClientInfo,
        text: String,
    },
    Text {
        text: String,
    },
    /// Edge to home: the client sent a binary frame (not part of the protocol; the session
    /// at the home answers it as it would on a direct connection).
    Binary,
    /// Home to edge, before `Close`: the close frame the session ends the client's
    /// WebSocket with (PROTOCOL.md, "Closing"). An edge that does not know it ignores it;
    /// a `Close` without it follows a `reconnect` hint (1001).
    Goodbye {
        code: u16,
        reason: String,
    },
    /// Either way: the connection ends.
    Close,
}

/// One side of a pipe: its id, and the replica at the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeEnd {
    pub id: String,
    pub peer: String,
    /// This side is the edge (it sends towards the home).
    pub at_edge: bool,
}

/// A client of another replica whose consultation runs here.
pub struct IncomingPipe {
    pub end: PipeEnd,
    pub client: ClientInfo,
    pub first: String,
    pub frames: mpsc::UnboundedReceiver<PipeOp>,
}

pub trait Homes: Send + Sync {
    /// This replica's id.
    fn replica(&self) -> &str;

    /// Whether other replicas can pipe clients here (`/readyz`).
    fn listening(&self) -> bool;

    /// Where `appointment`'s consultation runs: the live replica holding its lease, or this
    /// one, which takes the lease now if nobody live holds it.
    fn claim<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, Result<Home, HomeError>>;

    /// Extend this replica's leases; answers the appointments whose lease another replica
    /// holds now (their consultations must be handed over).
    fn renew<'a>(&'a self, appointments: &'a [String]) -> BoxFuture<'a, Vec<String>>;

    /// Give up the lease (the consultation ended, or this replica drains).
    fn release<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, ()>;

    /// Store what another replica needs to continue the consultation, for `ttl`.
    fn save<'a>(
        &'a self,
        appointment: &'a str,
        snapshot: String,
        ttl: Duration,
    ) -> BoxFuture<'a, ()>;

    /// The consultation's stored snapshot, if any.
    fn load<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, Option<String>>;

    /// The consultation ended: its snapshot goes.
    fn forget<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, ()>;

    /// Open a pipe to `home` for a client whose first frame is `first`; what the home
    /// answers arrives on the receiver, which ends (without a `Close`) if the home is lost.
    fn open_pipe<'a>(
        &'a self,
        home: &'a str,
        client: ClientInfo,
        first: String,
    ) -> BoxFuture<'a, Result<(PipeEnd, mpsc::UnboundedReceiver<PipeOp>), HomeError>>;

    /// Send `op` to the other side of a pipe; false if it cannot arrive.
    fn send<'a>(&'a self, end: &'a PipeEnd, op: PipeOp) -> BoxFuture<'a, bool>;

    /// This side is done with the pipe.
    fn close_pipe(&self, end: &PipeEnd);

    /// The pipes other replicas open to this one (taken once, by the service).
    fn incoming(&self) -> Option<mpsc::UnboundedReceiver<IncomingPipe>>;

    /// Draining: other replicas stop sending clients here, and every client connected here
    /// whose consultation runs elsewhere is told to reconnect. Returns how many were told.
    fn drain(&self, after_ms: u64) -> BoxFuture<'_, usize>;
}

/// Failures of the shared state, which any client's join runs into before it is verified,
/// reach the log once per interval.
static CLAIM_ERRORS: crate::logs::Limiter = crate::logs::Limiter::new(Duration::from_secs(10));

/// Serve one WebSocket: read the join, find where its consultation runs, and run the
/// session here or pipe it there. `unjoined`: the client's place among its address's
/// unjoined WebSockets, held until it has joined (or been piped to where it joins).
pub async fn route(
    deps: AppState,
    socket: WebSocket,
    client: ClientInfo,
    unjoined: Option<UnjoinedSlot>,
) {
    let (sink, stream) = socket.split();
    let mut sink: FrameSink = Box::pin(sink);
    let mut stream: FrameStream = Box::pin(stream);
    let timeout = Duration::from_secs(deps.config.limits.join_timeout_s);
    let first = session::first_frame(&mut stream, timeout).await;
    // Who asks comes first: nothing shared is claimed for a token that does not verify (that
    // join is refused here, by the session).
    let mut authenticated = None;
    let home = match first.joins() {
        Some((appointment, token)) => {
            let verified = deps
                .verifier
                .verify(&token, deps.clock.now().timestamp())
                .await;
            let trusted = verified.is_ok();
            authenticated = Some(verified);
            if trusted {
                claim_home(&deps, &mut sink, &client, &appointment).await
            } else {
                Some(Home::Here)
            }
        }
        // Not a join: the session here answers it.
        None => Some(Home::Here),
    };
    let Some(home) = home else {
        return;
    };
    match (home, first.text()) {
        (Home::Elsewhere(replica), Some(text)) => {
            let text = text.to_owned();
            // The home verifies the join; a pipe to it is bounded by its answer.
            drop(unjoined);
            edge(&deps, &replica, text, stream, sink, client).await;
        }
        _ => session::run(deps, first, stream, sink, client, unjoined, authenticated).await,
    }
}

/// Where the appointment's consultation runs, claimed for this replica if nowhere yet; `None`
/// when the shared state cannot say (the client was told, and the socket closed).
async fn claim_home(
    deps: &AppState,
    sink: &mut FrameSink,
    client: &ClientInfo,
    appointment: &str,
) -> Option<Home> {
    match deps.homes.claim(appointment).await {
        Ok(h) => Some(h),
        Err(e) => {
            if let Some(suppressed) = CLAIM_ERRORS.check("claim", std::time::Instant::now()) {
                warn!(suppressed, "cannot find where the consultation runs: {e}");
            }
            deps.metrics
                .ws_refused
                .with_label_values(&["state_unavailable"])
                .inc();
            refused(deps, client, "state_unavailable").await;
            let refusal = state_unavailable();
            let _ = send(sink, &refusal).await;
            session::send_close(sink, Close::after(&refusal)).await;
            let _ = sink.close().await;
            None
        }
    }
}

/// Audit a refusal at this replica (in summary: the client is not verified here).
async fn refused(deps: &AppState, client: &ClientInfo, code: &str) {
    let event = AuditEvent {
        client_ip: client.ip.clone(),
        action: "join".into(),
        outcome: "deny".into(),
        reason: Some(code.into()),
        ..AuditEvent::default()
    };
    let _ = deps.refusals.record(event).await;
}

fn state_unavailable() -> ServerMessage {
    ServerMessage::Error {
        code: "state_unavailable".into(),
        message: "the service cannot reach its shared state; try again shortly".into(),
    }
}

async fn send(sink: &mut FrameSink, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => sink.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// The edge of a pipe: the client's frames to the home, the home's to the client. If the
/// home is lost the client is told to reconnect (its next join finds the new home).
async fn edge(
    deps: &AppState,
    home: &str,
    first: String,
    mut stream: FrameStream,
    mut sink: FrameSink,
    client: ClientInfo,
) {
    let reconnect = ServerMessage::Reconnect { after_ms: 0 };
    // The client's address, for refusals this edge answers itself.
    let client_ip = ClientInfo {
        ip: client.ip.clone(),
        user_agent: None,
    };
    let (end, mut from_home) = match deps.homes.open_pipe(home, client, first).await {
        Ok(p) => p,
        Err(e) => {
            if let Some(suppressed) = CLAIM_ERRORS.check(home, std::time::Instant::now()) {
                warn!(
                    home,
                    suppressed, "cannot reach the replica running the consultation: {e}"
                );
            }
            let _ = send(&mut sink, &reconnect).await;
            let close = Close::after(&reconnect);
            session::send_close(&mut sink, close).await;
            session::linger(&mut stream, close).await;
            let _ = sink.close().await;
            return;
        }
    };
    deps.metrics.piped_sessions.inc();
    debug!(pipe = %end.id, home, "client piped to the consultation's replica");
    let mut home_lost = false;
    // The client's WebSocket got its close frame (from the home, or from this edge).
    let mut closed = false;
    loop {
        tokio::select! {
            frame = stream.next() => {
                let op = match frame {
                    Some(Ok(Message::Text(t))) => PipeOp::Text { text: t.to_string() },
                    Some(Ok(Message::Binary(_))) => PipeOp::Binary,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break,
                    // Refused by the WebSocket layer here: answered here, as the home would.
                    Some(Err(e)) => {
                        let close = match session::read(Some(Err(e))) {
                            Incoming::TooLarge => {
                                refused(deps, &client_ip, "message_too_large").await;
                                let refusal = ServerMessage::Error {
                                    code: "message_too_large".into(),
                                    message: "the message is over the size limit".into(),
                                };
                                let _ = send(&mut sink, &refusal).await;
                                Close::after(&refusal)
                            }
                            _ => Close::BROKEN_FRAME,
                        };
                        session::send_close(&mut sink, close).await;
                        session::linger(&mut stream, close).await;
                        closed = true;
                        break;
                    }
                };
                if !deps.homes.send(&end, op).await {
                    home_lost = true;
                    break;
                }
            }
            op = from_home.recv() => match op {
                Some(PipeOp::Text { text }) => {
                    if sink.send(Message::Text(text.into())).await.is_err() { break; }
                }
                // Closed now; the client's close frame in answer ends the loop (and the
                // home's session, lingering for it).
                Some(PipeOp::Goodbye { code, reason }) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    closed = true;
                }
                Some(PipeOp::Close) => {
                    if !closed {
                        // No goodbye: the home let the client go with a `reconnect` hint
                        // (it drains, or raced a drain).
                        let close = Close::after(&reconnect);
                        session::send_close(&mut sink, close).await;
                        session::linger(&mut stream, close).await;
                    }
                    break;
                }
                Some(_) => {}
                None => { home_lost = true; break; }
            }
        }
    }
    if home_lost {
        deps.metrics
            .reconnect_hints
            .with_label_values(&["home_lost"])
            .inc();
        if !closed {
            let _ = send(&mut sink, &reconnect).await;
            let close = Close::after(&reconnect);
            session::send_close(&mut sink, close).await;
            session::linger(&mut stream, close).await;
        }
    } else {
        deps.homes.send(&end, PipeOp::Close).await;
    }
    deps.homes.close_pipe(&end);
    let _ = sink.close().await;
    deps.metrics.piped_sessions.dec();
}

/// Run the sessions other replicas pipe here, for as long as the service runs.
pub async fn serve_incoming(deps: std::sync::Weak<crate::state::Deps>) {
    let Some(mut incoming) = deps.upgrade().and_then(|d| d.homes.incoming()) else {
        return;
    };
    while let Some(pipe) = incoming.recv().await {
        let Some(d) = deps.upgrade() else { return };
        tokio::spawn(home_side(d, pipe));
    }
}

/// The home of a pipe: the session, reading the edge's frames and writing back to it.
async fn home_side(deps: AppState, pipe: IncomingPipe) {
    deps.sessions.fetch_add(1, Ordering::SeqCst);
    let end = pipe.end.clone();
    let frames = tokio_stream::wrappers::UnboundedReceiverStream::new(pipe.frames)
        .take_while(|op| std::future::ready(*op != PipeOp::Close))
        .filter_map(|op| {
            std::future::ready(match op {
                PipeOp::Text { text } => Some(Ok(Message::Text(text.into()))),
                PipeOp::Binary => Some(Ok(Message::Binary(Default::default()))),
                PipeOp::Open { .. } | PipeOp::Goodbye { .. } | PipeOp::Close => None,
            })
        });
    let stream: FrameStream = Box::pin(frames);
    let sink: FrameSink = Box::pin(futures_util::sink::unfold(
        (deps.clone(), end.clone()),
        |(deps, end), msg: Message| async move {
            let op = match msg {
                Message::Text(t) => PipeOp::Text {
                    text: t.to_string(),
                },
                // The session's close frame: the edge closes the client's WebSocket with it.
                Message::Close(Some(frame)) => PipeOp::Goodbye {
                    code: frame.code,
                    reason: frame.reason.to_string(),
                },
                _ => return Ok((deps, end)),
            };
            if deps.homes.send(&end, op).await {
                Ok((deps, end))
            } else {
                Err(axum::Error::new(std::io::Error::other(
                    "the client's replica is gone",
                )))
            }
        },
    ));
    let first = FirstFrame::Frame(Some(Ok(Message::Text(pipe.first.into()))));
    session::run(deps.clone(), first, stream, sink, pipe.client, None, None).await;
    deps.homes.send(&end, PipeOp::Close).await;
    deps.homes.close_pipe(&end);
    deps.sessions.fetch_sub(1, Ordering::SeqCst);
}
