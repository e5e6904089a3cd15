//! A media thread ("shard"): one UDP port, the rooms placed on it, and every session in those
//! rooms. Nothing on the packet path takes a lock or crosses a thread: a publisher's packet
//! is decrypted, fanned out and re-encrypted for each subscriber right here, and the
//! datagrams leave in one `sendmmsg` per batch.
//!
//! The control plane talks to a shard through [`ShardHandle`]: commands over a channel, a
//! `mio` waker to interrupt the wait, answers on oneshot channels.
//!
//! - `core.rs`: [`ShardCore`], the sans-I/O state machine: datagrams, commands and the time
//!   in, transmits and its next deadline out
//! - `driver.rs`: the thread's I/O around it (mio, `recvmmsg`/`sendmmsg`, ICE-TCP, TURN)
//! - `commands.rs`: what the control plane asks of a shard
//! - `media.rs`: peer outputs, forwarding, publications and subscriptions

pub mod allocation;
mod busy;
mod commands;
mod core;
#[cfg(test)]
mod core_tests;
pub mod demux;
mod driver;
pub mod gso;
mod media;
mod quality;
mod spatial;
pub mod tcp;
pub mod timers;
pub mod udp;
mod vitals;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Interest, Poll, Waker};

pub use commands::{Census, Command};
pub use core::{Outbox, ShardCore, Via};

use crate::error::ControlError;
use crate::metrics::Metrics;
use driver::{SOCKET, Shard, WAKER};

/// Load of one shard, read by the node to place rooms.
#[derive(Debug, Default)]
pub struct ShardLoad {
    pub rooms: AtomicUsize,
    pub sessions: AtomicUsize,
    /// The share of wall time the thread was busy over its last measurement (parts per
    /// million), and how many rooms it had then.
    pub busy_ppm: AtomicU64,
    pub rooms_measured: AtomicUsize,
}

impl ShardLoad {
    pub fn busy(&self) -> f64 {
        self.busy_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Settings a shard needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub node_id: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Most participants in a consultation room, and in a shared room (its mixer's cap).
    pub max_participants: usize,
    pub max_shared_participants: usize,
    pub keyframe_request_interval: Duration,
    /// Busier than this share of wall time, the thread takes no new participants.
    pub max_busy: f64,
    /// The node's ICE-TCP candidate (announced address, TCP port), if enabled.
    pub tcp_candidate: Option<SocketAddr>,
    /// Send through the forwarding fast path (`webrtc::fast`).
    pub fast_path: bool,
    /// Send runs of datagrams to one destination segmented (`gso`), where the socket can.
    pub udp_gso: bool,
}

/// The control plane's end of a shard.
pub struct ShardHandle {
    pub index: usize,
    /// Where clients send media for rooms on this shard (announced address and port).
    pub media_addr: SocketAddr,
    pub load: Arc<ShardLoad>,
    commands: crossbeam_channel::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// A shard's end of the TURN server's bridge (crate::turn::bridge): relayed datagrams in,
/// sends to relay addresses out, without a socket.
pub(crate) struct ShardRelay {
    pub bridge: Arc<crate::turn::bridge::RelayBridge>,
    pub queue: crossbeam_channel::Receiver<crate::turn::bridge::Relayed>,
    /// This shard's media socket address as the TURN server names it.
    pub local: SocketAddr,
}

impl ShardHandle {
    /// What wakes the shard's thread (the bridge wakes it for relayed datagrams).
    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn send(&self, command: Command) -> Result<(), ControlError> {
        self.commands
            .send(command)
            .map_err(|_| ControlError::Unavailable)?;
        self.waker.wake().map_err(|_| ControlError::Unavailable)
    }

    /// Ask the shard to close everything and stop, and wait for it.
    pub fn shutdown(&mut self) {
        let _ = self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start shard `index` on `socket` (already bound). `candidate` is the address clients are
/// told to send to.
pub(crate) fn spawn(
    index: usize,
    socket: UdpSocket,
    candidate: SocketAddr,
    settings: ShardSettings,
    metrics: Metrics,
    track_ids: Arc<AtomicU64>,
    relay: Option<ShardRelay>,
) -> io::Result<ShardHandle> {
    socket.set_nonblocking(true)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE | Interest::WRITABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let load = Arc::new(ShardLoad::default());
    let mut core = ShardCore::new(
        index,
        settings,
        candidate,
        metrics,
        track_ids,
        load.clone(),
        Instant::now(),
    );
    let segmentation = core.settings.udp_gso && gso::supported(&socket);
    core.outbox.udp.set_segmentation(segmentation);
    let shard = Shard::new(core, poll, socket, rx, relay);
    let thread = std::thread::Builder::new()
        .name(format!("media-{index}"))
        .spawn(move || shard.run())?;
    Ok(ShardHandle {
        index,
        media_addr: candidate,
        load,
        commands: tx,
        waker,
        thread: Some(thread),
    })
}
