//! A media thread ("shard"): one UDP port, the rooms placed on it, and every session in those
//! rooms. Nothing on the packet path takes a lock or crosses a thread: a publisher's packet
//! is decrypted, fanned out and re-encrypted for each subscriber right here, and the
//! datagrams leave in one `sendmmsg` per batch.
//!
//! The control plane talks to a shard through [`ShardHandle`]: commands over a channel, a
//! `mio` waker to interrupt the wait, answers on oneshot channels.
//!
//! - `mod.rs`: the loop, socket I/O, timers
//! - `commands.rs`: what the control plane asks of a shard
//! - `media.rs`: peer outputs, forwarding, publications and subscriptions

pub mod allocation;
mod busy;
mod commands;
pub mod demux;
mod media;
mod quality;
mod spatial;
pub mod tcp;
pub mod timers;
pub mod udp;
mod vitals;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, error, info, warn};

pub use commands::{Census, Command};

use crate::error::ControlError;
use crate::ids::RoomId;
use crate::metrics::{DropReason, Metrics, ShardTally};
use crate::room::Room;
use crate::session::Session;
use demux::{Demux, Route, SessionKey};
use timers::{SessionUid, Timers};
use udp::{RecvBatch, SendQueue};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Receive batches per loop turn before timers and commands get their turn.
const MAX_RECV_BATCHES_PER_TURN: usize = 16;
/// Relayed datagrams (from the TURN server) taken per loop turn.
const MAX_RELAYED_PER_TURN: usize = 512;
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// Addresses one session may be reached from at once (see `Route::Check`).
const MAX_ADDRS_PER_SESSION: usize = 4;
/// rtc sometimes names a deadline that is already due again right after handling it; never
/// spin on it.
const MIN_TIMER_STEP: Duration = Duration::from_millis(1);

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

pub(crate) struct Shard {
    index: usize,
    settings: ShardSettings,
    poll: Poll,
    socket: mio::net::UdpSocket,
    /// The address our ICE candidate announces; peers tag datagrams with it.
    candidate: SocketAddr,
    commands: crossbeam_channel::Receiver<Command>,
    recv: Option<Box<RecvBatch>>,
    send: SendQueue,
    /// The last read turn stopped with datagrams possibly still waiting.
    socket_backlog: bool,
    demux: Demux,
    sessions: Slab<Session>,
    by_uid: HashMap<SessionUid, SessionKey>,
    next_uid: SessionUid,
    rooms: Slab<Room>,
    room_index: HashMap<RoomId, usize>,
    timers: Timers,
    dirty: Vec<SessionKey>,
    /// Node-wide track numbering, shared by all shards.
    track_ids: Arc<AtomicU64>,
    tally: ShardTally,
    metrics: Metrics,
    load: Arc<ShardLoad>,
    busy: busy::BusyMeter,
    next_housekeeping: Instant,
    /// The next 20 ms tick of the shared rooms' spatial mixers (None: no shared room here).
    next_mix: Option<Instant>,
    /// ICE-TCP connections this shard adopted.
    tcp: tcp::TcpConns,
    /// Transmits for TCP connections, routed after the peer that made them is released.
    tcp_out: Vec<crate::webrtc::Transmit>,
    /// Relayed media handed over by this node's TURN server (None: no TURN here).
    relay: Option<ShardRelay>,
    /// The last turn left relayed datagrams queued.
    relay_backlog: bool,
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
    let shard = Shard {
        index,
        settings,
        poll,
        socket,
        candidate,
        commands: rx,
        recv: Some(Box::new(RecvBatch::new())),
        send: SendQueue::default(),
        socket_backlog: false,
        demux: Demux::default(),
        sessions: Slab::new(),
        by_uid: HashMap::new(),
        next_uid: 1,
        rooms: Slab::new(),
        room_index: HashMap::new(),
        timers: Timers::default(),
        dirty: Vec::new(),
        track_ids,
        tally: ShardTally::default(),
        metrics,
        load: load.clone(),
        busy: busy::BusyMeter::new(Instant::now()),
        next_housekeeping: Instant::now() + HOUSEKEEPING_EVERY,
        next_mix: None,
        tcp: Default::default(),
        tcp_out: Vec::new(),
        relay,
        relay_backlog: false,
    };
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

impl Shard {
    fn run(mut self) {
        info!(shard = self.index, addr = %self.candidate, "media thread started");
        let mut events = Events::with_capacity(16);
        loop {
            let now = Instant::now();
            let timeout = if self.socket_backlog || self.relay_backlog {
                Some(Duration::ZERO)
            } else {
                let next = self
                    .timers
                    .next()
                    .map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping));
                let next = self.next_mix.map_or(next, |m| m.min(next));
                Some(next.saturating_duration_since(now))
            };
            self.busy.before_poll(now);
            let polled = self.poll.poll(&mut events, timeout);
            self.busy.after_poll(Instant::now());
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                error!(shard = self.index, "poll failed: {e}");
                break;
            }
            let mut readable = self.socket_backlog;
            let mut commands = false;
            let mut tcp_events = Vec::new();
            for ev in events.iter() {
                match ev.token() {
                    SOCKET => readable |= ev.is_readable(),
                    WAKER => commands = true,
                    Token(t) if t >= tcp::TCP_TOKEN_BASE => tcp_events.push((
                        t - tcp::TCP_TOKEN_BASE,
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    )),
                    _ => {}
                }
            }
            let now = Instant::now();
            if commands && !self.handle_commands(now) {
                break;
            }
            if commands || self.relay_backlog {
                self.read_relayed(now);
            }
            for (index, r, w) in tcp_events {
                self.on_tcp_event(index, r, w, now);
            }
            if readable {
                self.read_socket(now);
            }
            self.run_timers(now);
            if self.next_mix.is_some_and(|m| now >= m) {
                self.mix_tick(now);
            }
            if now >= self.next_housekeeping {
                self.housekeeping(now);
                self.next_housekeeping = now + HOUSEKEEPING_EVERY;
            }
            self.process_dirty(now);
            self.flush_send();
            self.tally.flush(&self.metrics, now, false);
        }
        self.close_all(Instant::now());
        self.flush_send();
        self.tally.flush(&self.metrics, Instant::now(), true);
        info!(shard = self.index, "media thread stopped");
    }

    fn read_socket(&mut self, now: Instant) {
        let Some(mut batch) = self.recv.take() else {
            return;
        };
        self.socket_backlog = false;
        for _ in 0..MAX_RECV_BATCHES_PER_TURN {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
            let result = batch.recv(&fd, |r| {
                self.on_datagram(now, r.from, r.data, r.truncated, false)
            });
            if matches!(result, Ok(n) if n > 0) {
                self.tally.recv_batches += 1;
            }
            match result {
                Ok(n) if n == udp::BATCH => self.socket_backlog = true,
                Ok(_) => {
                    self.socket_backlog = false;
                    break;
                }
                Err(e) => {
                    // ICMP errors from one peer surface here (ECONNREFUSED); keep going.
                    debug!(shard = self.index, "recv: {e}");
                    self.socket_backlog = true;
                    break;
                }
            }
            // Keep latency flat under load: send what this batch produced before reading on.
            self.process_dirty(now);
            self.flush_send();
        }
        self.recv = Some(batch);
    }

    /// One datagram from `from`: over UDP, or a frame of an ICE-TCP connection (`tcp`).
    fn on_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        truncated: bool,
        tcp: bool,
    ) {
        self.tally.datagrams_received += 1;
        self.tally.bytes_received += data.len() as u64;
        match self.demux.route(from, data, truncated) {
            Route::Drop(reason) => self.tally.drop(reason),
            Route::Known(key) => {
                // SRTP leaves the header in the clear: refuse streams the participant never
                // declared before spending a decryption on them.
                if let Some(ssrc) = demux::rtp_ssrc(data)
                    && self
                        .sessions
                        .get_mut(key)
                        .is_some_and(|s| !s.peer.admits_inbound_rtp(ssrc, data))
                {
                    self.tally.drop(DropReason::UnknownSsrc);
                    return;
                }
                self.feed(key, now, from, data, tcp)
            }
            Route::Check(key, remote) => {
                // A check from another agent than the one this session negotiated with is
                // dropped here: the WebRTC stack would log its username in a warning.
                if self
                    .sessions
                    .get(key)
                    .is_some_and(|s| !s.peer.expects_remote_ufrag(&remote))
                {
                    self.tally.drop(DropReason::StunUsername);
                    return;
                }
                self.feed(key, now, from, data, tcp);
                // An ICE-lite agent answers a valid check with a success response; only then
                // does the address route to this session.
                let mut accepted = false;
                if let Some(s) = self.sessions.get_mut(key) {
                    while let Some(t) = s.peer.poll_transmit() {
                        accepted |=
                            t.to == from && crate::webrtc::stun::is_binding_success(&t.data);
                        if t.tcp {
                            self.tcp_out.push(t);
                        } else {
                            self.send.push(t.to, t.data);
                        }
                    }
                    if accepted && !s.addrs.contains(&from) {
                        // A client that moves (ICE restart, a new network) adds addresses;
                        // only the latest few keep routing.
                        if s.addrs.len() >= MAX_ADDRS_PER_SESSION {
                            let oldest = s.addrs.remove(0);
                            self.demux.unbind(&oldest);
                        }
                        s.addrs.push(from);
                        self.demux.bind(from, key);
                    }
                }
                if !accepted {
                    self.tally.drop(DropReason::StunIntegrity);
                }
                self.route_tcp_out();
            }
        }
    }

    /// Send what peers produced for ICE-TCP connections.
    fn route_tcp_out(&mut self) {
        if self.tcp_out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.tcp_out);
        for t in &out {
            self.send_tcp(t.to, &t.data);
        }
        self.tcp_out = out;
        self.tcp_out.clear();
    }

    /// Hand a datagram to a session's peer and act on what comes out.
    fn feed(&mut self, key: SessionKey, now: Instant, from: SocketAddr, data: &[u8], tcp: bool) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.last_received = now;
        let peer = &mut s.peer;
        let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            peer.handle_datagram_on(now, from, data, tcp)
        }));
        if fed.is_err() {
            self.on_peer_panic(key, now);
            return;
        }
        self.mark_dirty(key);
        self.drive(key, now);
    }

    fn mark_dirty(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(key)
            && !s.dirty
        {
            s.dirty = true;
            self.dirty.push(key);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some((at, uid)) = self.timers.pop_due(now) {
            let Some(&key) = self.by_uid.get(&uid) else {
                continue;
            };
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.timer != Some(at) {
                continue; // re-armed since
            }
            s.timer = None;
            let peer = &mut s.peer;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| peer.handle_timeout(now)))
                .is_err()
            {
                self.on_peer_panic(key, now);
                continue;
            }
            self.mark_dirty(key);
        }
    }

    /// Drive every session touched this turn: outputs, owed offers, datagrams, next deadline.
    fn process_dirty(&mut self, now: Instant) {
        while let Some(key) = self.dirty.pop() {
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            s.dirty = false;
            self.drive(key, now);
            self.maybe_offer(key, now);
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            while let Some(t) = s.peer.poll_transmit() {
                if t.tcp {
                    self.tcp_out.push(t);
                } else {
                    self.send.push(t.to, t.data);
                }
            }
            let next = s.peer.next_timeout().map(|t| t.max(now + MIN_TIMER_STEP));
            if next != s.timer {
                s.timer = next;
                if let Some(t) = next {
                    self.timers.arm(t, s.uid);
                }
            }
            self.route_tcp_out();
        }
    }

    /// What the TURN server handed over, each as if it had arrived on the socket.
    fn read_relayed(&mut self, now: Instant) {
        for _ in 0..MAX_RELAYED_PER_TURN {
            let Some(r) = self.relay.as_ref().and_then(|r| r.queue.try_recv().ok()) else {
                break;
            };
            self.on_datagram(now, r.from, &r.data, false, false);
        }
        // More next turn: timers and the socket get theirs first.
        self.relay_backlog = self.relay.as_ref().is_some_and(|r| !r.queue.is_empty());
    }

    fn flush_send(&mut self) {
        if let Some(r) = &self.relay
            && r.bridge.active()
        {
            r.bridge.take_relayed(r.local, &mut self.send);
        }
        if self.send.is_empty() {
            return;
        }
        let f = self.send.flush(&self.socket);
        self.tally.datagrams_sent += f.datagrams as u64;
        self.tally.bytes_sent += f.bytes as u64;
        self.tally.send_batches += f.syscalls as u64;
        if f.blocked {
            // The kernel buffer is full; mio reports writability and the next turn retries.
            debug!(
                shard = self.index,
                queued = self.send.len(),
                "send buffer full"
            );
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let connect_timeout = self.settings.connect_timeout;
        let idle_timeout = self.settings.idle_timeout;
        let expired: Vec<(SessionKey, crate::events::LeaveReason)> = self
            .sessions
            .iter()
            .filter_map(|(key, s)| {
                use crate::events::LeaveReason;
                use crate::webrtc::ConnectionState;
                let never_connected =
                    !s.connected_once && now.duration_since(s.created) > connect_timeout;
                let went_silent =
                    s.connected_once && now.duration_since(s.last_received) > idle_timeout;
                if matches!(s.peer.state(), ConnectionState::Failed) {
                    Some((key, LeaveReason::Failed))
                } else if never_connected || went_silent {
                    Some((key, LeaveReason::Timeout))
                } else {
                    None
                }
            })
            .collect();
        for (key, reason) in expired {
            self.close_session(key, reason, now);
        }
        self.retry_keyframes(now);
        self.allocate_layers(now);
        self.report_quality(now);
        self.decide_speakers(now);
        self.load.rooms.store(self.rooms.len(), Ordering::Relaxed);
        self.load
            .sessions
            .store(self.sessions.len(), Ordering::Relaxed);
        if let Some(busy) = self.busy.sample(now) {
            self.load
                .busy_ppm
                .store((busy * 1e6) as u64, Ordering::Relaxed);
            self.load
                .rooms_measured
                .store(self.rooms.len(), Ordering::Relaxed);
            self.metrics
                .media_thread_busy
                .with_label_values(&[&self.index.to_string()])
                .set(busy);
        }
    }

    /// Can this thread take one more participant? Not while it is busier than the node
    /// allows: the calls already here would pay for it in delay and loss.
    fn has_headroom(&self) -> bool {
        self.busy.last() < self.settings.max_busy
    }

    fn on_peer_panic(&mut self, key: SessionKey, now: Instant) {
        self.tally.drop(DropReason::PeerPanic);
        if let Some(s) = self.sessions.get(key) {
            warn!(shard = self.index, room = %s.room_id, participant = %s.participant, "WebRTC stack panicked; closing this session");
        }
        self.close_session(key, crate::events::LeaveReason::InternalError, now);
    }

    fn next_uid(&mut self) -> SessionUid {
        let uid = self.next_uid;
        self.next_uid += 1;
        uid
    }
}
