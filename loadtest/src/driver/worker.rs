//! The driver's thread: waits on the participants' sockets and the timer heap, reads what
//! arrived, runs each participant's media and WebRTC deadlines, sends what they produced, and
//! carries out the commands of the async handle (`ClientDriver`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};
use slab::Slab;

use super::*;
use crate::media::audio::ToneLoop;
use crate::participant::Participant;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Wake {
    at: Instant,
    key: usize,
}

pub(super) struct Worker {
    poll: Poll,
    commands: crossbeam_channel::Receiver<Command>,
    participants: Slab<Participant>,
    timers: BinaryHeap<Reverse<Wake>>,
    /// The one wake-up each participant has in the heap.
    scheduled: HashMap<usize, Instant>,
    /// Encoded tones and speech (by frequency, tenths of dBFS, speech or not), shared by
    /// every participant that sends the same one.
    tones: HashMap<(u32, i32, bool), Arc<ToneLoop>>,
    buf: Vec<u8>,
}

impl Worker {
    pub(super) fn new(poll: Poll, commands: crossbeam_channel::Receiver<Command>) -> Worker {
        Worker {
            poll,
            commands,
            participants: Slab::new(),
            timers: BinaryHeap::new(),
            scheduled: HashMap::new(),
            tones: HashMap::new(),
            buf: vec![0u8; MAX_DATAGRAM],
        }
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = self
                .timers
                .peek()
                .map(|Reverse(w)| w.at.saturating_duration_since(now));
            if let Err(e) = self
                .poll
                .poll(&mut events, timeout.or(Some(Duration::from_secs(1))))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("client driver poll: {e}");
                return;
            }
            let now = Instant::now();
            let mut readable = Vec::new();
            let mut commands = false;
            let mut tcp_readable = Vec::new();
            let mut relay_readable = Vec::new();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    commands = true;
                } else if ev.token().0 & RELAY_TOKEN_BIT != 0 {
                    relay_readable.push(ev.token().0 & !RELAY_TOKEN_BIT);
                } else if ev.token().0 & crate::ice_tcp::TCP_TOKEN_BIT != 0 {
                    tcp_readable.push(ev.token().0 & !crate::ice_tcp::TCP_TOKEN_BIT);
                } else {
                    readable.push(ev.token().0);
                }
            }
            for key in tcp_readable {
                self.read_tcp(key, now);
            }
            for key in relay_readable {
                self.read_relay(key, now);
            }
            if commands && !self.handle_commands(now) {
                return;
            }
            for key in readable {
                self.read(key, now);
            }
            while let Some(Reverse(w)) = self.timers.peek().copied() {
                if w.at > now {
                    break;
                }
                self.timers.pop();
                if self.scheduled.get(&w.key) != Some(&w.at) {
                    continue;
                }
                self.scheduled.remove(&w.key);
                self.service(w.key, now);
            }
        }
    }

    fn read(&mut self, key: usize, now: Instant) {
        // A backlog (a starved thread) is taken a batch at a time, each followed by the
        // participant's outputs: the WebRTC stack's queues grow with what one call holds,
        // and keep that size.
        loop {
            let Some(p) = self.participants.get_mut(key) else {
                return;
            };
            let mut read = 0;
            while read < READ_BATCH {
                match p.socket.recv_from(&mut self.buf) {
                    // A network that blocks UDP lets nothing in; relay-only takes nothing
                    // but what the relay brings.
                    Ok(_) if p.spec.tcp_only || p.relay.is_some() => {}
                    Ok((n, from)) => match &mut p.downlink {
                        Some(link) => link.push(now, from, self.buf[..n].to_vec()),
                        None => p.peer.handle_datagram(now, from, &self.buf[..n]),
                    },
                    Err(_) => break,
                }
                read += 1;
            }
            self.service(key, now);
            if read < READ_BATCH {
                return; // drained (WouldBlock) or the socket failed
            }
        }
    }

    /// Frames from the participant's ICE-TCP connection, or its end.
    fn read_tcp(&mut self, key: usize, now: Instant) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        let Some(tcp) = &mut p.tcp else { return };
        let from = tcp.peer;
        let peer = &mut p.peer;
        let result = tcp.read_frames(|frame| peer.handle_datagram_on(now, from, frame, true));
        let flushed = tcp.flush();
        if (result.is_err() || flushed.is_err())
            && let Some(mut t) = p.tcp.take()
        {
            t.deregister(self.poll.registry());
        }
        self.service(key, now);
    }

    /// What the participant's TURN relay received, or its end.
    fn read_relay(&mut self, key: usize, now: Instant) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        let Some(relay) = &mut p.relay else { return };
        if let Err(e) = relay.read(now) {
            tracing::debug!(participant = %p.spec.name, "TURN relay closed: {e}");
            relay.deregister(self.poll.registry());
            p.relay = None;
            p.spec.tcp_only = true; // nothing else may carry its media: it goes silent
        }
        self.service(key, now);
    }

    /// Everything a participant has to do now: timers, media, outputs, datagrams; then
    /// schedule its next wake-up.
    fn service(&mut self, key: usize, now: Instant) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        if let Some(relay) = &mut p.relay {
            if relay.next_timeout().is_some_and(|t| t <= now) {
                relay.handle_timeout(now);
            }
            while let Some((from, data)) = relay.pop_received() {
                match &mut p.downlink {
                    Some(link) => link.push(now, from, data.to_vec()),
                    None => p.peer.handle_datagram(now, from, &data),
                }
            }
        }
        if let Some(link) = &mut p.downlink {
            while let Some((from, data)) = link.pop_due(now) {
                p.peer.handle_datagram(now, from, &data);
            }
        }
        if p.peer_timer.is_some_and(|t| t <= now) {
            p.peer_timer = None;
            p.peer.handle_timeout(now);
        }
        p.drive(now);
        p.send_media(now);
        while let Some(t) = p.peer.poll_transmit() {
            if t.tcp {
                if p.tcp.as_ref().is_none_or(|c| c.peer != t.to) {
                    let token = Token(key | crate::ice_tcp::TCP_TOKEN_BIT);
                    match crate::ice_tcp::IceTcp::connect(t.to, self.poll.registry(), token) {
                        Ok(c) => p.tcp = Some(c),
                        Err(e) => {
                            tracing::debug!("ICE-TCP connect to {}: {e}", t.to);
                            continue;
                        }
                    }
                }
                if let Some(c) = &mut p.tcp
                    && c.send(&t.data).is_err()
                {
                    p.tcp = None;
                }
                continue;
            }
            if let Some(relay) = &mut p.relay {
                relay.send(now, t.to, t.data);
                continue;
            }
            if p.spec.tcp_only {
                continue; // UDP is blocked on this participant's network
            }
            match &mut p.uplink {
                Some(link) => link.push(now, t.to, t.data.to_vec()),
                // A full socket buffer drops the datagram, as a real network would.
                None => {
                    let _ = p.socket.send_to(&t.data, t.to);
                }
            }
        }
        if let Some(link) = &mut p.uplink {
            while let Some((to, data)) = link.pop_due(now) {
                let _ = p.socket.send_to(&data, to);
            }
        }
        p.peer_timer = p
            .peer
            .next_timeout()
            .map(|t| t.max(now + Duration::from_millis(1)));
        let links = [&p.uplink, &p.downlink]
            .into_iter()
            .flatten()
            .filter_map(|l| l.next_release());
        let relay_timer = p
            .relay
            .as_mut()
            .and_then(|r| r.next_timeout())
            .map(|t| t.max(now + Duration::from_millis(1)));
        let next = [p.peer_timer, p.next_media(), relay_timer]
            .into_iter()
            .flatten()
            .chain(links)
            .min();
        if let Some(at) = next
            && self.scheduled.get(&key).is_none_or(|&s| at < s)
        {
            self.scheduled.insert(key, at);
            self.timers.push(Reverse(Wake { at, key }));
        }
    }

    fn handle_commands(&mut self, now: Instant) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Shutdown => return false,
                Command::Create { spec, reply } => {
                    let _ = reply.send(self.create(*spec, now));
                }
                Command::AcceptAnswer { key, sdp, reply } => {
                    let r = self.with(key, |p| p.peer.accept_answer(now, &sdp).map_err(Into::into));
                    self.service(key.0, now);
                    let _ = reply.send(r);
                }
                Command::AcceptOffer { key, sdp, reply } => {
                    let r = self.with(key, |p| p.peer.accept_offer(now, &sdp).map_err(Into::into));
                    self.service(key.0, now);
                    let _ = reply.send(r);
                }
                Command::SetVideo { key, video, reply } => {
                    let r = self.with(key, |p| {
                        p.set_video(video, now)?;
                        Ok(p.peer.create_offer(now)?)
                    });
                    self.service(key.0, now);
                    let _ = reply.send(r);
                }
                Command::Rollback { key, reply } => {
                    let r = self.with(key, |p| p.peer.rollback(now).map_err(Into::into));
                    let _ = reply.send(r);
                }
                Command::Stats { key, reply } => {
                    let _ = reply.send(self.with(key, |p| Ok(p.stats())));
                }
                Command::Latency { reply } => {
                    let mut h =
                        Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
                    for (_, p) in &self.participants {
                        p.merge_latency(&mut h);
                    }
                    let _ = reply.send(Ok(h));
                }
                Command::ResetLatency { reply } => {
                    for (_, p) in self.participants.iter_mut() {
                        p.reset_latency();
                    }
                    let _ = reply.send(Ok(()));
                }
                Command::SendRaw {
                    key,
                    to,
                    datagrams,
                    reply,
                } => {
                    let r = self.with(key, |p| {
                        for d in &datagrams {
                            p.socket.send_to(d, to)?;
                        }
                        Ok(())
                    });
                    let _ = reply.send(r);
                }
                Command::SendUndeclaredRtp {
                    key,
                    ssrc,
                    count,
                    reply,
                } => {
                    let r = self.with(key, |p| {
                        for seq in 0..count {
                            p.peer.send_undeclared_rtp(now, ssrc, 111, seq);
                        }
                        Ok(())
                    });
                    self.service(key.0, now);
                    let _ = reply.send(r);
                }
                Command::SendOnChannel { key, data, reply } => {
                    let r = self.with(key, |p| {
                        anyhow::ensure!(
                            p.send_on_channel(now, &data),
                            "the data channel is not open"
                        );
                        Ok(())
                    });
                    self.service(key.0, now);
                    let _ = reply.send(r);
                }
                Command::RestartIce { key, reply } => {
                    let r = self.restart_ice(key, now);
                    self.service(key.0, now);
                    let _ = reply.send(r);
                }
                Command::SetToneLevel {
                    key,
                    level_dbfs,
                    reply,
                } => {
                    let voice = self
                        .participants
                        .get(key.0)
                        .and_then(|p| p.spec.publish.audio.as_ref())
                        .map(|a| (a.hz, a.speech));
                    let r = match voice {
                        Some((hz, speech)) => self.tone(hz, level_dbfs, speech).and_then(|t| {
                            self.with(key, |p| {
                                p.set_tone(t);
                                Ok(())
                            })
                        }),
                        None => Err(anyhow::anyhow!("the participant sends no tone")),
                    };
                    let _ = reply.send(r);
                }
                Command::SetLinks {
                    key,
                    up,
                    down,
                    reply,
                } => {
                    let r = self.with(key, |p| {
                        // A link that stays keeps what it holds; one that goes drops it.
                        for (link, spec) in [(&mut p.uplink, up), (&mut p.downlink, down)] {
                            match (link.as_mut(), spec) {
                                (Some(l), Some(spec)) => l.set_spec(spec),
                                (_, spec) => *link = spec.map(crate::netem::Link::new),
                            }
                        }
                        Ok(())
                    });
                    let _ = reply.send(r);
                }
                Command::Close { key, reply } => {
                    if self.participants.contains(key.0) {
                        let mut p = self.participants.remove(key.0);
                        let _ = self.poll.registry().deregister(&mut p.socket);
                        if let Some(r) = &mut p.relay {
                            r.deregister(self.poll.registry());
                        }
                        p.peer.close();
                        while let Some(t) = p.peer.poll_transmit() {
                            match &mut p.relay {
                                Some(r) => r.send(now, t.to, t.data),
                                None => {
                                    let _ = p.socket.send_to(&t.data, t.to);
                                }
                            }
                        }
                        if let Some(r) = &mut p.relay {
                            r.close(now);
                        }
                        self.scheduled.remove(&key.0);
                    }
                    let _ = reply.send(Ok(()));
                }
            }
        }
        true
    }

    /// Swap the participant's socket for one on a new port (the old one closes, as when a
    /// phone leaves Wi-Fi) and restart ICE from there.
    fn restart_ice(&mut self, key: ParticipantKey, now: Instant) -> anyhow::Result<String> {
        let p = self
            .participants
            .get_mut(key.0)
            .ok_or_else(|| anyhow::anyhow!("no such participant"))?;
        let (mut socket, local) = crate::participant::bind_socket(p.spec.bind_ip)?;
        self.poll
            .registry()
            .register(&mut socket, Token(key.0), Interest::READABLE)?;
        let mut old = std::mem::replace(&mut p.socket, socket);
        let _ = self.poll.registry().deregister(&mut old);
        Ok(p.peer.restart_ice(now, local)?)
    }

    /// The encoded tone (or speech) of this frequency and level, encoded once per driver.
    fn tone(&mut self, hz: u32, level_dbfs: f64, speech: bool) -> anyhow::Result<Arc<ToneLoop>> {
        let key = (hz, (level_dbfs * 10.0).round() as i32, speech);
        if let Some(t) = self.tones.get(&key) {
            return Ok(t.clone());
        }
        let t = Arc::new(if speech {
            ToneLoop::speech(hz, level_dbfs)?
        } else {
            ToneLoop::new(hz, level_dbfs)?
        });
        self.tones.insert(key, t.clone());
        Ok(t)
    }

    fn with<T>(
        &mut self,
        key: ParticipantKey,
        f: impl FnOnce(&mut Participant) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let p = self
            .participants
            .get_mut(key.0)
            .ok_or_else(|| anyhow::anyhow!("no such participant"))?;
        f(p)
    }

    fn create(
        &mut self,
        spec: ParticipantSpec,
        now: Instant,
    ) -> anyhow::Result<(ParticipantKey, String)> {
        let tone = match &spec.publish.audio {
            Some(a) => Some(self.tone(a.hz, a.level_dbfs, a.speech)?),
            None => None,
        };
        let mut p = Participant::new(spec, tone, now)?;
        let offer = p.peer.create_offer(now)?;
        let entry = self.participants.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(&mut p.socket, Token(key), Interest::READABLE)?;
        if let Some(r) = &mut p.relay {
            r.register(self.poll.registry(), Token(key | RELAY_TOKEN_BIT))?;
        }
        entry.insert(p);
        self.service(key, now);
        Ok((ParticipantKey(key), offer))
    }
}
