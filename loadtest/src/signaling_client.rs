//! Joining a consultation the way users do: through signaling's WebSocket, with a token.
//! The session negotiates media with the client library's participant when it is admitted,
//! answers the SFU's offers, and hands every server message to its owner (tests read them;
//! the load tool times them).

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
        let started = Instant::now();
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(ws_url),
        )
        .await??;
        let (mut sink, mut stream) = ws.split();
        let join = ClientMessage::Join {
            v: VERSION,
            appointment: appointment.to_owned(),
            token: token.to_owned(),
            invite: invite.map(str::to_owned),
        };
        sink.send(Message::Text(serde_json::to_string(&join)?.into()))
            .await?;

        let (commands, mut command_rx) = mpsc::unbounded_channel::<ClientMessage>();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (phase_tx, mut phase) = watch::channel(Phase::Connecting);
        let (d, name) = (driver.clone(), spec.name.clone());
        let task = tokio::spawn(async move {
            let mut session = Session {
                driver: d,
                spec,
                phase: phase_tx,
                events: event_tx,
            };
            loop {
                tokio::select! {
                    frame = stream.next() => {
                        let text = match frame {
                            Some(Ok(Message::Text(t))) => t,
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                            Some(Ok(_)) => continue,
                        };
                        let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else { continue };
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
            session.close("connection_closed").await;
            let _ = sink.close().await;
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
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Send a protocol message (host controls, leave, ...).
    pub fn send(&self, msg: ClientMessage) {
        let _ = self.commands.send(msg);
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
            ServerMessage::Joined { .. } => {
                if let Some(k) = self.key() {
                    let _ = self.driver.close(k).await;
                }
                match self.driver.create(self.spec.clone()).await {
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
                        match self.driver.accept_offer(key, description.sdp.clone()).await {
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
