//! A [`ShardCore`] on simulated time between two client peers in memory: the handshakes, the
//! SFU's offers, and the forwarding itself, with no socket, thread or clock. Every datagram
//! the core leaves in its outbox is handed to the client it is addressed to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, oneshot};

use super::commands::Reply;
use super::{Command, ShardCore, ShardLoad, ShardSettings, Via};
use crate::error::ControlError;
use crate::events::{RoomEvent, RoomEventEnvelope};
use crate::ids::{ParticipantId, RoomId};
use crate::media::{Codec, MediaKind, RtpPacket};
use crate::metrics::{DropReason, Metrics};
use crate::room::RoomKind;
use crate::webrtc::{ConnectionState, OutboundId, Peer, PeerOutput, Side};

/// The node's media address as its candidates announce it (nothing listens there).
const NODE: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    40000,
);
const STEP: Duration = Duration::from_millis(2);

fn settings() -> ShardSettings {
    ShardSettings {
        node_id: "core-test".into(),
        connect_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_participants: 4,
        max_shared_participants: 16,
        keyframe_request_interval: Duration::from_millis(500),
        max_busy: 1.0,
        tcp_candidate: None,
        fast_path: true,
        udp_gso: false,
    }
}

struct Client {
    name: ParticipantId,
    at: SocketAddr,
    peer: Peer,
    /// The client's microphone track.
    mic: OutboundId,
    /// Payloads of the RTP it received, in order.
    heard: Vec<(u16, Bytes)>,
}

/// The core, its clients, and the simulated clock.
struct Net {
    core: ShardCore,
    room: RoomId,
    events: broadcast::Receiver<std::sync::Arc<RoomEventEnvelope>>,
    clients: Vec<Client>,
    now: Instant,
}

impl Net {
    fn new() -> Net {
        let now = Instant::now();
        let load = Arc::new(ShardLoad::default());
        let core = ShardCore::new(
            0,
            settings(),
            NODE,
            Metrics::new(),
            Arc::new(AtomicU64::new(1)),
            load,
            now,
        );
        let (events_tx, events) = broadcast::channel(64);
        let mut net = Net {
            core,
            room: RoomId::new("Appointment/core-test").unwrap(),
            events,
            clients: Vec::new(),
            now,
        };
        let room = net.room.clone();
        net.ask(|reply| Command::CreateRoom {
            room,
            kind: RoomKind::Consultation,
            events: events_tx,
            mixer: None,
            reply,
        })
        .expect("the room is created");
        net
    }

    /// Give the core a command and take its answer, which it gives before returning.
    fn ask<T>(&mut self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ControlError> {
        let (reply, mut answer) = oneshot::channel();
        assert!(self.core.handle_command(self.now, command(reply)));
        answer.try_recv().expect("answered at once")
    }

    /// A participant joins: a session on the core, a client peer that publishes a
    /// microphone, and its offer answered by the core.
    fn join(&mut self, name: &str, port: u16, ssrc: u32) {
        let participant = ParticipantId::new(name).unwrap();
        let room = self.room.clone();
        let p = participant.clone();
        self.ask(|reply| Command::OpenSession {
            room,
            participant: p,
            role: Some("doctor".into()),
            rights: Default::default(),
            reply,
        })
        .expect("a session opens");
        let at = SocketAddr::from(([198, 51, 100, 7], port));
        let mut peer = Peer::new(Side::Client, at, self.now).unwrap();
        let mic = peer
            .add_outbound(Codec::Opus, ssrc, name, &format!("{name}-mic"))
            .unwrap();
        let offer = peer.create_offer(self.now).unwrap();
        let (room, p) = (self.room.clone(), participant.clone());
        let answer = self
            .ask(|reply| Command::Offer {
                room,
                participant: p,
                sdp: offer,
                reply,
            })
            .expect("the core answers the offer");
        peer.accept_answer(self.now, &answer).unwrap();
        self.clients.push(Client {
            name: participant,
            at,
            peer,
            mic,
            heard: Vec::new(),
        });
    }

    /// One step of simulated time: datagrams both ways, the clients' outputs, the core's
    /// offers answered, then the clock moves on and deadlines fire.
    fn step(&mut self) {
        let Net {
            core, clients, now, ..
        } = self;
        for c in clients.iter_mut() {
            while let Some(t) = c.peer.poll_transmit() {
                assert_eq!(t.to, NODE, "a client sends only to the node");
                core.handle_datagram(*now, c.at, &t.data, false, Via::Udp);
            }
        }
        for (to, data) in core.outbox(*now).udp.drain() {
            if let Some(c) = clients.iter_mut().find(|c| c.at == to) {
                c.peer.handle_datagram(*now, NODE, &data);
            }
        }
        assert!(core.outbox(*now).tcp.is_empty(), "no ICE-TCP here");
        for c in clients.iter_mut() {
            while let Some(out) = c.peer.poll_output() {
                if let PeerOutput::Rtp { packet, .. } = out {
                    c.heard.push((packet.sequence_number, packet.payload));
                }
            }
        }
        self.answer_offers();
        self.now += STEP;
        let now = self.now;
        for c in &mut self.clients {
            if c.peer.next_timeout().is_some_and(|t| t <= now) {
                c.peer.handle_timeout(now);
            }
        }
        if self.core.poll_timeout() <= now {
            self.core.handle_timeout(now);
        }
    }

    /// The core offers a client the others' tracks; the client answers.
    fn answer_offers(&mut self) {
        while let Ok(envelope) = self.events.try_recv() {
            let RoomEvent::Offer {
                participant, sdp, ..
            } = &envelope.event
            else {
                continue;
            };
            let now = self.now;
            let c = self
                .clients
                .iter_mut()
                .find(|c| c.name == *participant)
                .expect("an offer for a client");
            let answer = c.peer.accept_offer(now, sdp).expect("the client accepts");
            let room = self.room.clone();
            let participant = participant.clone();
            self.ask(|reply| Command::Answer {
                room,
                participant,
                sdp: answer,
                reply,
            })
            .expect("the core takes the answer");
        }
    }

    /// Step until `done` holds, for at most `limit` of simulated time.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> bool {
        let until = self.now + limit;
        while self.now < until {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Client `from` speaks `frames` 20 ms Opus frames, each with its own payload.
    fn speak(&mut self, from: usize, frames: u16, first: u16) {
        for i in first..first + frames {
            let c = &mut self.clients[from];
            let packet = RtpPacket {
                ssrc: 0,
                sequence_number: 0,
                timestamp: 0,
                payload_type: 111,
                marker: false,
                payload: Bytes::from(format!("frame {i} of {}", c.name)),
                audio_level: Some(30),
            };
            let sent = c
                .peer
                .send_rtp(self.now, c.mic, &packet, 1000 + i, u32::from(i) * 960);
            assert!(sent, "the microphone is ready");
            for _ in 0..10 {
                self.step();
            }
        }
    }
}

fn connected(net: &Net) -> bool {
    net.clients
        .iter()
        .all(|c| c.peer.state() == ConnectionState::Connected)
}

/// Every session of the core sends the other's microphone to its client.
fn subscribed(net: &Net) -> bool {
    net.core.sessions.iter().all(|(_, s)| {
        s.subscriptions.len() == 1 && s.subscriptions.keys().all(|&o| s.peer.outbound_ready(o))
    })
}

/// Two clients connected through a fresh core, each subscribed to the other: a track is
/// published with its first packet, and the core then offers it to the other client.
fn consultation() -> Net {
    let mut net = Net::new();
    net.join("doctor-1", 50001, 1111);
    net.join("patient-1", 50002, 2222);
    assert!(
        net.run_until(Duration::from_secs(10), connected),
        "both clients connect through the core"
    );
    for i in 0..100 {
        if subscribed(&net) {
            for c in &mut net.clients {
                c.heard.clear();
            }
            return net;
        }
        net.speak(0, 1, 60_000 + i);
        net.speak(1, 1, 60_000 + i);
    }
    panic!("the clients did not subscribe to each other");
}

/// Both clients hear each other's microphone through the core: every frame, in order, with
/// sequence numbers that run on without a gap.
#[test]
fn a_packet_is_forwarded_between_two_clients_on_simulated_time() {
    let mut net = consultation();
    let forwarded = net.core.tally.rtp_packets_forwarded;
    net.speak(0, 50, 0);
    net.speak(1, 50, 0);
    net.run_until(Duration::from_millis(200), |_| false);
    for (listener, speaker) in [(1, "doctor-1"), (0, "patient-1")] {
        let heard = &net.clients[listener].heard;
        let payloads: Vec<String> = heard
            .iter()
            .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
            .collect();
        let expected: Vec<String> = (0..50).map(|i| format!("frame {i} of {speaker}")).collect();
        assert_eq!(payloads, expected, "what client {listener} heard");
        for pair in heard.windows(2) {
            assert_eq!(
                pair[1].0,
                pair[0].0.wrapping_add(1),
                "sequence numbers run on"
            );
        }
    }
    assert_eq!(net.core.tally.rtp_packets_forwarded - forwarded, 100);
}

/// A host's mute holds on the packet path: the core drops the muted microphone's packets,
/// counted, and the other client hears nothing of them.
#[test]
fn a_muted_microphone_is_not_forwarded() {
    let mut net = consultation();
    net.speak(1, 5, 0);
    assert_eq!(net.clients[0].heard.len(), 5);

    let room = net.room.clone();
    net.ask(|reply| Command::SetMuted {
        room,
        participant: ParticipantId::new("patient-1").unwrap(),
        kind: MediaKind::Audio,
        muted: true,
        reply,
    })
    .expect("the mute is applied");
    net.speak(1, 5, 5);
    assert_eq!(net.clients[0].heard.len(), 5, "nothing after the mute");
    assert_eq!(net.core.tally.dropped(DropReason::Muted), 5);
}
