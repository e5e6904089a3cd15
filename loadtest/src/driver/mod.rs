//! The thread that runs many participants: one `mio` poll over their sockets, one timer heap
//! for their media and their peers' deadlines, no allocation per packet beyond the WebRTC
//! stack's own. Async code talks to it with commands (create, apply SDP, read stats).

mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use hdrhistogram::Histogram;
use mio::{Poll, Token, Waker};
use tokio::sync::oneshot;

use crate::participant::{ParticipantSpec, ParticipantStats};
use worker::Worker;

/// A participant's handle within its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParticipantKey(usize);

const WAKER: Token = Token(usize::MAX);
/// Tokens of TURN relay sockets: the participant's key with this bit set.
const RELAY_TOKEN_BIT: usize = 1 << 29;
const MAX_DATAGRAM: usize = 2048;
/// Datagrams read from one socket before the participant's outputs are taken.
const READ_BATCH: usize = 32;

type Reply<T> = oneshot::Sender<anyhow::Result<T>>;

enum Command {
    /// Create a participant and return its initial offer.
    Create {
        spec: Box<ParticipantSpec>,
        reply: Reply<(ParticipantKey, String)>,
    },
    AcceptAnswer {
        key: ParticipantKey,
        sdp: String,
        reply: Reply<()>,
    },
    /// Apply the SFU's offer and return the answer.
    AcceptOffer {
        key: ParticipantKey,
        sdp: String,
        reply: Reply<String>,
    },
    Stats {
        key: ParticipantKey,
        reply: Reply<ParticipantStats>,
    },
    Latency {
        reply: Reply<Histogram<u64>>,
    },
    /// Forget latency samples so far (a measurement window starts).
    ResetLatency {
        reply: Reply<()>,
    },
    /// Send raw datagrams from the participant's own socket (hostile-input tests).
    SendRaw {
        key: ParticipantKey,
        to: SocketAddr,
        datagrams: Vec<Vec<u8>>,
        reply: Reply<()>,
    },
    /// Start or stop publishing video; returns the offer that says so.
    SetVideo {
        key: ParticipantKey,
        video: Option<crate::participant::VideoSpec>,
        reply: Reply<String>,
    },
    /// Withdraw the participant's unanswered offer (glare).
    Rollback {
        key: ParticipantKey,
        reply: Reply<()>,
    },
    /// Send RTP on an SSRC the participant never declared (hostile-input tests).
    SendUndeclaredRtp {
        key: ParticipantKey,
        ssrc: u32,
        count: u16,
        reply: Reply<()>,
    },
    /// Send a binary message on the participant's data channel (an avatar pose).
    SendOnChannel {
        key: ParticipantKey,
        data: Vec<u8>,
        reply: Reply<()>,
    },
    /// Move to a new local port and make an ICE-restart offer.
    RestartIce {
        key: ParticipantKey,
        reply: Reply<String>,
    },
    /// Send the participant's tone at another loudness.
    SetToneLevel {
        key: ParticipantKey,
        level_dbfs: f64,
        reply: Reply<()>,
    },
    /// Change the participant's network, each way (None: a perfect link).
    SetLinks {
        key: ParticipantKey,
        up: Option<crate::netem::LinkSpec>,
        down: Option<crate::netem::LinkSpec>,
        reply: Reply<()>,
    },
    Close {
        key: ParticipantKey,
        reply: Reply<()>,
    },
    Shutdown,
}

struct Inner {
    commands: crossbeam_channel::Sender<Command>,
    waker: Waker,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// Runs participants on one thread. Clone it freely; the thread stops with the last clone.
#[derive(Clone)]
pub struct ClientDriver {
    inner: Arc<Inner>,
}

impl ClientDriver {
    pub fn start(name: &str) -> io::Result<ClientDriver> {
        Self::start_in(name, || Ok(()))
    }

    /// Like `start`, with `enter` run first on the driver's thread: to move it into a network
    /// namespace (its sockets are made there), say. Its error fails the start.
    pub fn start_in(
        name: &str,
        enter: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> io::Result<ClientDriver> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let worker = Worker::new(poll, rx);
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("clients-{name}"))
            .spawn(move || {
                let entered = enter();
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if ok {
                    worker.run();
                }
            })?;
        if let Ok(Err(e)) = entered_rx.recv() {
            let _ = thread.join();
            return Err(io::Error::other(e));
        }
        Ok(ClientDriver {
            inner: Arc::new(Inner {
                commands: tx,
                waker,
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .map_err(|_| anyhow::anyhow!("client driver stopped"))?;
        self.inner.waker.wake()?;
        rx.await
            .map_err(|_| anyhow::anyhow!("client driver stopped"))?
    }

    pub async fn create(&self, spec: ParticipantSpec) -> anyhow::Result<(ParticipantKey, String)> {
        self.call(|reply| Command::Create {
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    pub async fn accept_answer(&self, key: ParticipantKey, sdp: String) -> anyhow::Result<()> {
        self.call(|reply| Command::AcceptAnswer { key, sdp, reply })
            .await
    }

    pub async fn accept_offer(&self, key: ParticipantKey, sdp: String) -> anyhow::Result<String> {
        self.call(|reply| Command::AcceptOffer { key, sdp, reply })
            .await
    }

    pub async fn set_video(
        &self,
        key: ParticipantKey,
        video: Option<crate::participant::VideoSpec>,
    ) -> anyhow::Result<String> {
        self.call(|reply| Command::SetVideo { key, video, reply })
            .await
    }

    pub async fn rollback(&self, key: ParticipantKey) -> anyhow::Result<()> {
        self.call(|reply| Command::Rollback { key, reply }).await
    }

    pub async fn stats(&self, key: ParticipantKey) -> anyhow::Result<ParticipantStats> {
        self.call(|reply| Command::Stats { key, reply }).await
    }

    /// Send-to-receive latency over every track every participant of this driver received.
    pub async fn latency(&self) -> anyhow::Result<Histogram<u64>> {
        self.call(|reply| Command::Latency { reply }).await
    }

    pub async fn reset_latency(&self) -> anyhow::Result<()> {
        self.call(|reply| Command::ResetLatency { reply }).await
    }

    pub async fn send_raw(
        &self,
        key: ParticipantKey,
        to: SocketAddr,
        datagrams: Vec<Vec<u8>>,
    ) -> anyhow::Result<()> {
        self.call(|reply| Command::SendRaw {
            key,
            to,
            datagrams,
            reply,
        })
        .await
    }

    pub async fn send_undeclared_rtp(
        &self,
        key: ParticipantKey,
        ssrc: u32,
        count: u16,
    ) -> anyhow::Result<()> {
        self.call(|reply| Command::SendUndeclaredRtp {
            key,
            ssrc,
            count,
            reply,
        })
        .await
    }

    /// Send a binary message on the data channel (in a shared room: the avatar's pose, see
    /// `metaclinic_sfu::spatial::Pose::encode`). Fails while the channel is not open.
    pub async fn send_on_channel(&self, key: ParticipantKey, data: Vec<u8>) -> anyhow::Result<()> {
        self.call(|reply| Command::SendOnChannel { key, data, reply })
            .await
    }

    /// The participant's network changes: a new local port, then an ICE-restart offer to
    /// send to the SFU.
    pub async fn restart_ice(&self, key: ParticipantKey) -> anyhow::Result<String> {
        self.call(|reply| Command::RestartIce { key, reply }).await
    }

    /// Talk louder or softer: the tone's level, in dBFS (audio level header included).
    pub async fn set_tone_level(&self, key: ParticipantKey, level_dbfs: f64) -> anyhow::Result<()> {
        self.call(|reply| Command::SetToneLevel {
            key,
            level_dbfs,
            reply,
        })
        .await
    }

    /// Put a bad network between the participant and the SFU (or take it away).
    pub async fn set_links(
        &self,
        key: ParticipantKey,
        up: Option<crate::netem::LinkSpec>,
        down: Option<crate::netem::LinkSpec>,
    ) -> anyhow::Result<()> {
        self.call(|reply| Command::SetLinks {
            key,
            up,
            down,
            reply,
        })
        .await
    }

    pub async fn close(&self, key: ParticipantKey) -> anyhow::Result<()> {
        self.call(|reply| Command::Close { key, reply }).await
    }
}
