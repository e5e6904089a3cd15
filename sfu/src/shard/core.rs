//! The media thread's state machine, without I/O (str0m's `handle_input`/`poll_output`):
//! fed datagrams, commands and the time, it forwards, negotiates and keeps time, and leaves
//! what is to be sent in its [`Outbox`]. It owns no socket, no poll and no clock; the driver
//! (`driver.rs`) owns those, and a test can run it on simulated time (`core_tests.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use slab::Slab;
use tracing::warn;

use super::busy::BusyMeter;
use super::demux::{self, Demux, Route};
use super::timers::Timers;
use super::udp::SendQueue;
use super::{Command, ShardLoad, ShardSettings};
use crate::events::LeaveReason;
use crate::ids::RoomId;
use crate::metrics::{DropReason, Metrics, ShardTally};
use crate::room::Room;
use crate::session::{Session, SessionKey, SessionUid};
use crate::webrtc::{Peer, Transmit};

const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// Addresses one session may be reached from at once (see `Route::Check`).
const MAX_ADDRS_PER_SESSION: usize = 4;
/// rtc sometimes names a deadline that is already due again right after handling it; never
/// spin on it.
const MIN_TIMER_STEP: Duration = Duration::from_millis(1);

/// What the core has to send: UDP datagrams (sent in batches) and frames for ICE-TCP
/// connections (`tcp` holds the peers' transmits as they are, the driver frames them).
#[derive(Default)]
pub struct Outbox {
    pub udp: SendQueue,
    pub tcp: Vec<Transmit>,
}

impl Outbox {
    /// Move everything `peer` has to send here. True when one of them is a STUN binding
    /// success to `check_from` (the peer accepted that address's connectivity check).
    fn take_from(&mut self, peer: &mut Peer, check_from: Option<SocketAddr>) -> bool {
        let mut accepted = false;
        while let Some(t) = peer.poll_transmit() {
            accepted |=
                Some(t.to) == check_from && crate::webrtc::stun::is_binding_success(&t.data);
            if t.tcp {
                self.tcp.push(t);
            } else {
                self.udp.push(t.to, t.data);
            }
        }
        accepted
    }
}

/// Which transport a datagram came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    /// A frame of an ICE-TCP connection (RFC 4571).
    Tcp,
}

pub struct ShardCore {
    pub(super) index: usize,
    pub(super) settings: ShardSettings,
    /// The address our ICE candidate announces; peers tag datagrams with it.
    pub(super) candidate: SocketAddr,
    pub(super) demux: Demux,
    pub(super) sessions: Slab<Session>,
    pub(super) by_uid: HashMap<SessionUid, SessionKey>,
    next_uid: SessionUid,
    pub(super) rooms: Slab<Room>,
    pub(super) room_index: HashMap<RoomId, usize>,
    timers: Timers,
    pub(super) dirty: Vec<SessionKey>,
    /// Node-wide track numbering, shared by all shards.
    pub(super) track_ids: Arc<AtomicU64>,
    pub(super) tally: ShardTally,
    pub(super) metrics: Metrics,
    load: Arc<ShardLoad>,
    pub(super) busy: BusyMeter,
    next_housekeeping: Instant,
    /// The next 20 ms tick of the shared rooms' spatial mixers (None: no shared room here).
    pub(super) next_mix: Option<Instant>,
    pub(super) outbox: Outbox,
}

impl ShardCore {
    pub fn new(
        index: usize,
        settings: ShardSettings,
        candidate: SocketAddr,
        metrics: Metrics,
        track_ids: Arc<AtomicU64>,
        load: Arc<ShardLoad>,
        now: Instant,
    ) -> ShardCore {
        ShardCore {
            index,
            settings,
            candidate,
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
            load,
            busy: BusyMeter::new(now),
            next_housekeeping: now + HOUSEKEEPING_EVERY,
            next_mix: None,
            outbox: Outbox::default(),
        }
    }

    /// One datagram from `from`, over UDP or a frame of an ICE-TCP connection.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        truncated: bool,
        via: Via,
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
                self.feed(key, now, from, data, via)
            }
            Route::Check(key, remote) => self.on_check(key, &remote, now, from, data, via),
        }
    }

    /// A STUN check naming `key`'s session, from an address that may be new to it.
    fn on_check(
        &mut self,
        key: SessionKey,
        remote: &str,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        via: Via,
    ) {
        // A check from another agent than the one this session negotiated with is dropped
        // here: the WebRTC stack would log its username in a warning.
        if self
            .sessions
            .get(key)
            .is_some_and(|s| !s.peer.expects_remote_ufrag(remote))
        {
            self.tally.drop(DropReason::StunUsername);
            return;
        }
        self.feed(key, now, from, data, via);
        // An ICE-lite agent answers a valid check with a success response; only then does the
        // address route to this session.
        let Some(s) = self.sessions.get_mut(key) else {
            self.tally.drop(DropReason::StunIntegrity);
            return;
        };
        if !self.outbox.take_from(&mut s.peer, Some(from)) {
            self.tally.drop(DropReason::StunIntegrity);
            return;
        }
        if !s.addrs.contains(&from) {
            // A client that moves (ICE restart, a new network) adds addresses; only the
            // latest few keep routing.
            if s.addrs.len() >= MAX_ADDRS_PER_SESSION {
                let oldest = s.addrs.remove(0);
                self.demux.unbind(&oldest);
            }
            s.addrs.push(from);
            self.demux.bind(from, key);
        }
    }

    /// Hand a datagram to a session's peer and act on what comes out.
    fn feed(&mut self, key: SessionKey, now: Instant, from: SocketAddr, data: &[u8], via: Via) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.last_received = now;
        let peer = &mut s.peer;
        let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            peer.handle_datagram_on(now, from, data, via == Via::Tcp);
            peer.take_rejected_packets()
        }));
        let Ok(rejected) = fed else {
            self.on_peer_panic(key, now);
            return;
        };
        self.tally.drop_n(DropReason::PeerRejected, rejected);
        self.mark_dirty(key);
        self.drive(key, now);
    }

    /// Carry out one command of the control plane. False when told to shut down (the core
    /// has then closed every session; their goodbyes are in the outbox).
    pub fn handle_command(&mut self, now: Instant, command: Command) -> bool {
        if let Command::Shutdown = command {
            self.close_all(now);
            return false;
        }
        self.command(command, now);
        true
    }

    /// When the core next needs [`ShardCore::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        let next = self
            .timers
            .next()
            .map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping));
        self.next_mix.map_or(next, |m| m.min(next))
    }

    /// Let time pass to `now`: the peers' deadlines, the mixers' tick, housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_timers(now);
        if self.next_mix.is_some_and(|m| now >= m) {
            self.mix_tick(now);
        }
        if now >= self.next_housekeeping {
            self.housekeeping(now);
            self.next_housekeeping = now + HOUSEKEEPING_EVERY;
        }
    }

    /// What is ready to send, once every session touched since the last call has been
    /// driven (outputs, owed offers, transmits, next deadline). The caller drains it.
    pub fn outbox(&mut self, now: Instant) -> &mut Outbox {
        self.process_dirty(now);
        &mut self.outbox
    }

    /// Publish the counters kept on the packet path (every 200 ms, or now if `force`).
    pub fn publish_tallies(&mut self, now: Instant, force: bool) {
        self.tally.flush(&self.metrics, now, force);
    }

    /// The driver waits for I/O from `now` on...
    pub fn waiting(&mut self, now: Instant) {
        self.busy.before_poll(now);
    }

    /// ...and woke at `now`: the wait counts as idle time.
    pub fn woke(&mut self, now: Instant) {
        self.busy.after_poll(now);
    }

    pub(super) fn mark_dirty(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.touch(key, &mut self.dirty);
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
            self.outbox.take_from(&mut s.peer, None);
            let next = s.peer.next_timeout().map(|t| t.max(now + MIN_TIMER_STEP));
            if next != s.timer {
                s.timer = next;
                if let Some(t) = next {
                    self.timers.arm(t, s.uid);
                }
            }
        }
    }

    /// Move what a session's peer (already out of the slab) has left to send.
    pub(super) fn take_transmits(&mut self, peer: &mut Peer) {
        self.outbox.take_from(peer, None);
    }

    fn housekeeping(&mut self, now: Instant) {
        let connect_timeout = self.settings.connect_timeout;
        let idle_timeout = self.settings.idle_timeout;
        let expired: Vec<(SessionKey, LeaveReason)> = self
            .sessions
            .iter()
            .filter_map(|(key, s)| {
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
    pub(super) fn has_headroom(&self) -> bool {
        self.busy.last() < self.settings.max_busy
    }

    pub(super) fn on_peer_panic(&mut self, key: SessionKey, now: Instant) {
        self.tally.drop(DropReason::PeerPanic);
        if let Some(s) = self.sessions.get(key) {
            warn!(shard = self.index, room = %s.room_id, participant = %s.participant, "WebRTC stack panicked; closing this session");
        }
        self.close_session(key, LeaveReason::InternalError, now);
    }

    pub(super) fn next_uid(&mut self) -> SessionUid {
        let uid = self.next_uid;
        self.next_uid += 1;
        uid
    }
}
