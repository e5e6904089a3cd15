//! Joining a consultation the way users do: through signaling's WebSocket, with a token.
//! The session negotiates media with the client library's participant when it is admitted,
//! answers the SFU's offers, and hands every server message to its owner (tests read them;
//! the load tool times them). Told to `reconnect` (a draining replica, a room moved to
//! another SFU node), it drops its media, opens a new WebSocket (to the next of its
//! signaling URLs) and joins again, as the web client does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use metaclinic_signaling::protocol::{ClientMessage, Description, SdpKind, ServerMessage, VERSION};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::driver::{ClientDriver, ParticipantKey};
use crate::participant::{ParticipantSpec, ParticipantStats};

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Lobby,
    /// Admitted; media is (being) negotiated by this participant.
    InCall(ParticipantKey),
    /// The server ended the session (with the code or message type that says why).
    Closed(String),
}

pub struct SignalingParticipant {
    pub name: String,
    commands: mpsc::UnboundedSender<ClientMessage>,
    events: mpsc::UnboundedReceiver<ServerMessage>,
    phase: watch::Receiver<Phase>,
    driver: ClientDriver,
    task: JoinHandle<()>,
    /// From opening the WebSocket to the first server answer (lobby, joined or error).
    pub join_ms: u64,
    reconnects: Arc<AtomicU32>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Attempts at reconnecting after a `reconnect` hint before the session gives up.
const RECONNECT_ATTEMPTS: u32 = 20;

/// Open a WebSocket to the first of `urls` that takes it (bounded) and send `join`.
async fn connect(urls: &[String], join: &ClientMessage, attempts: u32) -> anyhow::Result<Ws> {
    let mut last = anyhow::anyhow!("no signaling URL");
    for attempt in 0..attempts {
        let url = &urls[attempt as usize % urls.len()];
        match tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((mut ws, _))) => {
                ws.send(Message::Text(serde_json::to_string(join)?.into()))
                    .await?;
                return Ok(ws);
            }
            // A draining replica refuses (503); the next URL, or a moment later, takes it.
            Ok(Err(e)) => last = e.into(),
            Err(_) => last = anyhow::anyhow!("{url}: no connection within 10 s"),
        }
        if attempt + 1 < attempts {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Err(last)
}

impl SignalingParticipant {
    /// Open `ws_url` (like `ws://127.0.0.1:8080/v1/ws`) and ask to join `appointment`.
    /// Returns once the server has answered the join (the phase says how).
    pub async fn join(
        driver: &ClientDriver,
        ws_url: &str,
        appointment: &str,
        token: &str,
        invite: Option<&str>,
        spec: ParticipantSpec,
    ) -> anyhow::Result<SignalingParticipant> {
        Self::join_any(
            driver,
            &[ws_url.to_owned()],
            appointment,
            token,
            invite,
            spec,
        )
        .await
    }

    /// Like [`join`](Self::join), with several signaling replicas: the first URL is used
    /// first, the others when a reconnect hint sends the session elsewhere.
    pub async fn join_any(
        driver: &ClientDriver,
        ws_urls: &[String],
        appointment: &str,
        token: &str,
        invite: Option<&str>,
        spec: ParticipantSpec,
    ) -> anyhow::Result<SignalingParticipant> {
        anyhow::ensure!(!ws_urls.is_empty(), "no signaling URL");
        let started = Instant::now();
        let join = ClientMessage::Join {
            v: VERSION,
            appointment: appointment.to_owned(),
            token: token.to_owned(),
            invite: invite.map(str::to_owned),
        };
        let ws = connect(&ws_urls[..1], &join, 1).await?;

        let (commands, mut command_rx) = mpsc::unbounded_channel::<ClientMessage>();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (phase_tx, mut phase) = watch::channel(Phase::Connecting);
        let (d, name) = (driver.clone(), spec.name.clone());
        let reconnects = Arc::new(AtomicU32::new(0));
        let counted = reconnects.clone();
        // Reconnects try the next replica first.
        let mut urls = ws_urls.to_vec();
        urls.rotate_left(1);
        let task = tokio::spawn(async move {
            let mut session = Session {
                driver: d,
                spec,
                phase: phase_tx,
                events: event_tx,
            };
            let mut ws = Some(ws);
            while let Some(socket) = ws.take() {
                let (mut sink, mut stream) = socket.split();
                let mut reconnect_after = None;
                loop {
                    tokio::select! {
                        frame = stream.next() => {
                            let text = match frame {
                                Some(Ok(Message::Text(t))) => t,
                                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                                Some(Ok(_)) => continue,
                            };
                            let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                            if let ServerMessage::Reconnect { after_ms } = msg {
                                reconnect_after = Some(after_ms);
                                let _ = session.events.send(msg);
                                break;
                            }
                            for reply in session.on_message(&msg).await {
                                if sink.send(Message::Text(serde_json::to_string(&reply).unwrap_or_default().into())).await.is_err() {
                                    break;
                                }
                            }
                            let _ = session.events.send(msg);
                        }
                        cmd = command_rx.recv() => match cmd {
                            Some(cmd) => {
                                if sink.send(Message::Text(serde_json::to_string(&cmd).unwrap_or_default().into())).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        }
                    }
                }
                let _ = sink.close().await;
                let Some(after_ms) = reconnect_after else {
                    break;
                };
                session.drop_media().await;
                tokio::time::sleep(Duration::from_millis(after_ms.min(30_000))).await;
                match connect(&urls, &join, RECONNECT_ATTEMPTS).await {
                    Ok(socket) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        ws = Some(socket);
                    }
                    Err(e) => {
                        tracing::warn!(participant = %session.spec.name, "cannot reconnect: {e}");
                        session.close("reconnect_failed").await;
                    }
                }
            }
            session.close("connection_closed").await;
        });
        // Wait (bounded) for the server's answer to the join.
        let answered = tokio::time::timeout(
            Duration::from_secs(15),
            phase.wait_for(|p| *p != Phase::Connecting),
        )
        .await
        .map(|_| ());
        let join_ms = started.elapsed().as_millis() as u64;
        if answered.is_err() {
            task.abort();
            anyhow::bail!("{name}: no answer to the join within 15 s");
        }
        Ok(SignalingParticipant {
            name,
            commands,
            events,
            phase,
            driver: driver.clone(),
            task,
            join_ms,
            reconnects,
        })
    }

    /// How many times the session reconnected after a `reconnect` hint.
    pub fn reconnects(&self) -> u32 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Send a protocol message (host controls, leave, ...).
    pub fn send(&self, msg: ClientMessage) {
        let _ = self.commands.send(msg);
    }

    /// Send a line of the call's text chat (PROTOCOL.md, "Chat").
    pub fn chat(&self, text: &str) {
        self.send(ClientMessage::Chat {
            text: text.to_owned(),
        });
    }

    /// As a host: allow the call's chat, or stop it.
    pub fn allow_chat(&self, allowed: bool) {
        self.send(ClientMessage::AllowChat { allowed });
    }

    /// The next chat line heard within `timeout`: (from, text); other messages are skipped.
    pub async fn next_chat(&mut self, timeout: Duration) -> Option<(String, String)> {
        match self
            .wait_for(timeout, |m| matches!(m, ServerMessage::Chat { .. }))
            .await
        {
            Some(ServerMessage::Chat { from, text, .. }) => Some((from, text)),
            _ => None,
        }
    }

    /// The next server message for which `pred` holds, within `timeout` (others are
    /// skipped).
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> Option<ServerMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(m)) if pred(&m) => return Some(m),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Wait for the phase to satisfy `pred`.
    pub async fn wait_phase(&mut self, timeout: Duration, pred: impl Fn(&Phase) -> bool) -> Phase {
        let _ = tokio::time::timeout(timeout, self.phase.wait_for(|p| pred(p))).await;
        self.phase()
    }

    /// Media statistics, once in the call.
    pub async fn stats(&self) -> anyhow::Result<ParticipantStats> {
        match self.phase() {
            Phase::InCall(key) => self.driver.stats(key).await,
            other => anyhow::bail!("{}: not in the call ({other:?})", self.name),
        }
    }

    /// Poll media statistics until `done` holds or `timeout` passes; returns the last.
    pub async fn wait_media(
        &self,
        timeout: Duration,
        done: impl Fn(&ParticipantStats) -> bool,
    ) -> anyhow::Result<ParticipantStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats().await;
            if let Ok(s) = &s
                && (done(s) || Instant::now() >= deadline)
            {
                return Ok(s.clone());
            }
            if Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Put a bad network between this participant and the SFU, each way (None: none).
    pub async fn set_links(
        &self,
        up: Option<crate::netem::LinkSpec>,
        down: Option<crate::netem::LinkSpec>,
    ) -> anyhow::Result<()> {
        match self.phase() {
            Phase::InCall(key) => self.driver.set_links(key, up, down).await,
            other => anyhow::bail!("{}: not in the call ({other:?})", self.name),
        }
    }

    /// Leave on purpose and close.
    pub async fn leave(self) {
        self.send(ClientMessage::Leave);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Drop the connection without a goodbye (a reload, a lost network).
    pub fn disconnect(self) {
        self.task.abort();
    }
}

/// The session's own side of the protocol: media negotiation and phase.
struct Session {
    driver: ClientDriver,
    spec: ParticipantSpec,
    phase: watch::Sender<Phase>,
    events: mpsc::UnboundedSender<ServerMessage>,
}

impl Session {
    fn key(&self) -> Option<ParticipantKey> {
        match &*self.phase.borrow() {
            Phase::InCall(k) => Some(*k),
            _ => None,
        }
    }

    /// A reconnect hint: the media participant goes (the rejoin negotiates a new one).
    async fn drop_media(&mut self) {
        if let Some(k) = self.key() {
            let _ = self.driver.close(k).await;
        }
        let _ = self.phase.send(Phase::Connecting);
    }

    /// Close the media participant, if any, and record why the session ended.
    async fn close(&mut self, why: &str) {
        if let Some(k) = self.key() {
            let _ = self.driver.close(k).await;
        }
        let done = matches!(&*self.phase.borrow(), Phase::Closed(_));
        if !done {
            let _ = self.phase.send(Phase::Closed(why.to_owned()));
        }
    }

    /// React to a server message; returns what to send back.
    async fn on_message(&mut self, msg: &ServerMessage) -> Vec<ClientMessage> {
        match msg {
            ServerMessage::Lobby { .. } => {
                let _ = self.phase.send(Phase::Lobby);
                vec![]
            }
            ServerMessage::ReturnedToLobby => {
                if let Some(k) = self.key() {
                    let _ = self.driver.close(k).await;
                }
                let _ = self.phase.send(Phase::Lobby);
                vec![]
            }
            ServerMessage::Joined { ice_servers, .. } => {
                if let Some(k) = self.key() {
                    let _ = self.driver.close(k).await;
                }
                let mut spec = self.spec.clone();
                if let Some((transport, ca)) = &spec.relay_via {
                    spec.relay = crate::relay::RelaySpec::from_ice_servers(
                        ice_servers,
                        *transport,
                        ca.clone(),
                    );
                    if spec.relay.is_none() {
                        tracing::warn!(participant = %spec.name, "relay-only, but `joined` names no TURN server over {transport:?}");
                    }
                }
                match self.driver.create(spec).await {
                    Ok((key, offer)) => {
                        let _ = self.phase.send(Phase::InCall(key));
                        vec![ClientMessage::Sdp {
                            description: Description {
                                kind: SdpKind::Offer,
                                sdp: offer,
                            },
                        }]
                    }
                    Err(e) => {
                        tracing::warn!(participant = %self.spec.name, "cannot create the media participant: {e}");
                        vec![]
                    }
                }
            }
            ServerMessage::Sdp { description } => {
                let Some(key) = self.key() else { return vec![] };
                match description.kind {
                    SdpKind::Answer => {
                        if let Err(e) = self
                            .driver
                            .accept_answer(key, description.sdp.clone())
                            .await
                        {
                            tracing::warn!(participant = %self.spec.name, "applying the answer: {e}");
                        }
                        vec![]
                    }
                    SdpKind::Offer => {
                        let applied = self.driver.accept_offer(key, description.sdp.clone()).await;
                        tokio::time::sleep(self.spec.answer_delay).await;
                        match applied {
                            Ok(answer) => vec![ClientMessage::Sdp {
                                description: Description {
                                    kind: SdpKind::Answer,
                                    sdp: answer,
                                },
                            }],
                            Err(e) => {
                                tracing::warn!(participant = %self.spec.name, "applying the SFU's offer: {e}");
                                vec![]
                            }
                        }
                    }
                }
            }
            ServerMessage::Ended { reason } => {
                self.close(&format!(
                    "ended:{}",
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ))
                .await;
                vec![]
            }
            ServerMessage::Removed => {
                self.close("removed").await;
                vec![]
            }
            ServerMessage::Replaced => {
                self.close("replaced").await;
                vec![]
            }
            ServerMessage::Denied { code } => {
                self.close(code).await;
                vec![]
            }
            ServerMessage::Error { code, .. } if *self.phase.borrow() == Phase::Connecting => {
                // The join itself was refused.
                let _ = self.phase.send(Phase::Closed(code.clone()));
                vec![]
            }
            _ => vec![],
        }
    }
}
