//! The media thread's I/O around its [`ShardCore`]: one `mio` poll over the UDP socket
//! (`recvmmsg`/`sendmmsg` in batches), the adopted ICE-TCP connections, the command channel's
//! waker and the TURN bridge. It reads the clock, feeds the core, and sends what the core
//! leaves in its outbox; everything else is the core's.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use tracing::{debug, error, info};

use super::core::{ShardCore, Via};
use super::udp::{self, RecvBatch};
use super::{Command, ShardRelay, tcp};

pub(super) const SOCKET: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
/// Receive batches per loop turn before timers and commands get their turn.
const MAX_RECV_BATCHES_PER_TURN: usize = 16;
/// Relayed datagrams (from the TURN server) taken per loop turn.
const MAX_RELAYED_PER_TURN: usize = 512;

pub(super) struct Shard {
    pub(super) core: ShardCore,
    pub(super) poll: Poll,
    socket: mio::net::UdpSocket,
    commands: crossbeam_channel::Receiver<Command>,
    recv: Box<RecvBatch>,
    /// The last read turn stopped with datagrams possibly still waiting.
    socket_backlog: bool,
    /// ICE-TCP connections this shard adopted.
    pub(super) tcp: tcp::TcpConns,
    /// Relayed media handed over by this node's TURN server (None: no TURN here).
    relay: Option<ShardRelay>,
    /// The last turn left relayed datagrams queued.
    relay_backlog: bool,
}

impl Shard {
    pub(super) fn new(
        core: ShardCore,
        poll: Poll,
        socket: mio::net::UdpSocket,
        commands: crossbeam_channel::Receiver<Command>,
        relay: Option<ShardRelay>,
    ) -> Shard {
        Shard {
            core,
            poll,
            socket,
            commands,
            recv: Box::new(RecvBatch::new()),
            socket_backlog: false,
            tcp: Default::default(),
            relay,
            relay_backlog: false,
        }
    }

    pub(super) fn run(mut self) {
        let index = self.core.index;
        info!(shard = index, addr = %self.core.candidate, "media thread started");
        let mut events = Events::with_capacity(16);
        let mut tcp_events = Vec::new();
        loop {
            let now = Instant::now();
            let timeout = if self.socket_backlog || self.relay_backlog {
                Duration::ZERO
            } else {
                self.core.poll_timeout().saturating_duration_since(now)
            };
            self.core.waiting(now);
            let polled = self.poll.poll(&mut events, Some(timeout));
            self.core.woke(Instant::now());
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                error!(shard = index, "poll failed: {e}");
                break;
            }
            let mut readable = self.socket_backlog;
            let mut commands = false;
            tcp_events.clear();
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
            for &(index, r, w) in &tcp_events {
                self.on_tcp_event(index, r, w, now);
            }
            if readable {
                self.read_socket(now);
            }
            self.core.handle_timeout(now);
            self.send(now);
            self.core.publish_tallies(now, false);
        }
        let now = Instant::now();
        self.core.handle_command(now, Command::Shutdown);
        self.send(now);
        self.core.publish_tallies(now, true);
        info!(shard = index, "media thread stopped");
    }

    /// Hand every queued command to the core (ICE-TCP connections are the driver's). False
    /// when told to shut down.
    fn handle_commands(&mut self, now: Instant) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Shutdown => return false,
                Command::AdoptTcp { stream, first } => self.adopt_tcp(stream, first, now),
                command => {
                    self.core.handle_command(now, command);
                }
            }
        }
        true
    }

    fn read_socket(&mut self, now: Instant) {
        self.socket_backlog = false;
        for _ in 0..MAX_RECV_BATCHES_PER_TURN {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
            let core = &mut self.core;
            let result = self.recv.recv(&fd, |r| {
                core.handle_datagram(now, r.from, r.data, r.truncated, Via::Udp)
            });
            if matches!(result, Ok(n) if n > 0) {
                self.core.tally.recv_batches += 1;
            }
            match result {
                Ok(n) if n == udp::BATCH => self.socket_backlog = true,
                Ok(_) => {
                    self.socket_backlog = false;
                    break;
                }
                Err(e) => {
                    // ICMP errors from one peer surface here (ECONNREFUSED); keep going.
                    debug!(shard = self.core.index, "recv: {e}");
                    self.socket_backlog = true;
                    break;
                }
            }
            // Keep latency flat under load: send what this batch produced before reading on.
            self.send(now);
        }
    }

    /// What the TURN server handed over, each as if it had arrived on the socket.
    fn read_relayed(&mut self, now: Instant) {
        let Some(relay) = &self.relay else { return };
        for _ in 0..MAX_RELAYED_PER_TURN {
            let Ok(r) = relay.queue.try_recv() else { break };
            self.core
                .handle_datagram(now, r.from, &r.data, false, Via::Udp);
        }
        // More next turn: timers and the socket get theirs first.
        self.relay_backlog = !relay.queue.is_empty();
    }

    /// Send what the core has ready: frames to ICE-TCP connections, datagrams to relay
    /// addresses over the TURN bridge, the rest in `sendmmsg` batches.
    fn send(&mut self, now: Instant) {
        let mut frames = std::mem::take(&mut self.core.outbox(now).tcp);
        for t in frames.drain(..) {
            self.send_tcp(t.to, &t.data);
        }
        self.core.outbox.tcp = frames;
        let queue = &mut self.core.outbox.udp;
        if let Some(r) = &self.relay
            && r.bridge.active()
        {
            r.bridge.take_relayed(r.local, queue);
        }
        if queue.is_empty() {
            return;
        }
        let f = queue.flush(&self.socket);
        let tally = &mut self.core.tally;
        tally.datagrams_sent += f.datagrams as u64;
        tally.bytes_sent += f.bytes as u64;
        tally.send_batches += f.syscalls as u64;
        tally.send_messages += f.messages as u64;
        if f.blocked {
            // The kernel buffer is full; mio reports writability and the next turn retries.
            debug!(
                shard = self.core.index,
                queued = queue.len(),
                "send buffer full"
            );
        }
    }
}
