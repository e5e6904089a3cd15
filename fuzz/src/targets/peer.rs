//! What a participant hands the SFU's WebRTC stack (`sfu::webrtc::Peer`, the server side):
//! its SDP offers, its answers to the SFU's offers, its trickled ICE candidates, and the
//! datagrams a session sees before DTLS is up (STUN checks, a ClientHello). The shard catches
//! panics from the stack and closes only that session; here each one is a finding, a bug in
//! the stack we must contain.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metaclinic_sfu::media::Codec;
use metaclinic_sfu::webrtc::{Peer, PeerError, Side};

use super::packets::{self, LOCAL_PWD, LOCAL_UFRAG, REMOTE_UFRAG};
use super::{Harness, Target, outcome, text};
use crate::mutate::Grammar;

const SDP_DICT: &[&[u8]] = &[
    b"a=group:BUNDLE 0 1 2",
    b"a=group:BUNDLE",
    b"a=mid:0",
    b"a=mid:1",
    b"a=mid:",
    b"a=setup:active",
    b"a=setup:passive",
    b"a=setup:holdconn",
    b"a=rtcp-mux",
    b"a=rtcp-rsize",
    b"a=recvonly",
    b"a=sendonly",
    b"a=inactive",
    b"a=sendrecv",
    b"a=ice-lite",
    b"a=ice-ufrag:Wv3q",
    b"a=ice-pwd:7fbe0PO2nPqrlzdXyqNbKeAb",
    b"a=ice-options:trickle ice2",
    b"a=fingerprint:sha-256 00",
    b"a=fingerprint:sha-1 00:11",
    b"a=rid:q send",
    b"a=rid:h recv pt=96;max-width=1280",
    b"a=simulcast:send q;h;f",
    b"a=simulcast:recv ~q;h",
    b"a=ssrc-group:FID 1 2",
    b"a=ssrc-group:SIM 1 2 3",
    b"a=ssrc:1 cname:x",
    b"a=msid:- -",
    b"a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    b"a=extmap:15 urn:ietf:params:rtp-hdrext:sdes:mid",
    b"a=extmap:0 x",
    b"a=extmap:4096/sendonly x",
    b"a=rtpmap:96 VP8/90000",
    b"a=rtpmap:111 opus/48000/2",
    b"a=rtpmap:97 rtx/90000",
    b"a=fmtp:97 apt=96",
    b"a=fmtp:97 apt=",
    b"a=rtcp-fb:* nack",
    b"a=rtcp-fb:96 nack pli",
    b"a=sctp-port:5000",
    b"a=max-message-size:0",
    b"a=candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host",
    b"a=end-of-candidates",
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111",
    b"m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    b"m=video 0 UDP/TLS/RTP/SAVPF 96",
    b"c=IN IP4 0.0.0.0",
    b"c=IN IP6 ::",
    b"t=0 0",
    b"s=-",
    b"v=0",
    b"o=- 1 1 IN IP4 127.0.0.1",
    b"b=AS:30",
    b"a=extmap-allow-mixed",
    b"a=msid-semantic: WMS *",
];

fn server() -> Side {
    Side::Server {
        ufrag: LOCAL_UFRAG.into(),
        pwd: LOCAL_PWD.into(),
        fast_path: true,
    }
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

fn seed_offer(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds/sdp-offer")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// A session whose participant's offer (a camera, simulcast or not) has been answered.
pub fn answered_peer(offer: &str, now: Instant) -> Peer {
    let mut peer = Peer::new(server(), local(), now).expect("a server peer");
    peer.accept_offer(now, &seed_offer(offer))
        .expect("the seed offer is accepted");
    peer
}

/// Everything the shard reads from a peer after feeding it, as the media thread does.
fn drain(peer: &mut Peer, now: Instant) {
    for _ in 0..256 {
        if peer.poll_output().is_none() {
            break;
        }
    }
    for _ in 0..256 {
        if peer.poll_transmit().is_none() {
            break;
        }
    }
    peer.handle_timeout(now + Duration::from_millis(50));
    let _ = peer.next_timeout();
}

/// The kind of error, without the offending text the stack quotes after a colon.
fn error_kind(e: &PeerError) -> String {
    let (side, m) = match e {
        PeerError::Rejected(m) => ("rejected", m),
        PeerError::Setup(m) => ("setup", m),
    };
    format!("{side} {}", m.split(':').next().unwrap_or(""))
}

pub fn offer() -> Target {
    Target {
        name: "sdp-offer",
        entry: "sfu::webrtc::Peer::accept_offer (Side::Server, a fresh session)",
        grammar: Grammar::Sdp,
        max_len: 64 * 1024,
        dict: SDP_DICT,
        seeds: Vec::new,
        build: || {
            let now = Instant::now();
            Box::new(move |data: &[u8]| {
                let mut peer = Peer::new(server(), local(), now).expect("a server peer");
                let result = peer.accept_offer(now, &text(data));
                if let Ok(answer) = &result {
                    assert!(
                        answer.starts_with("v=0"),
                        "invariant: an answer that is no SDP"
                    );
                }
                drain(&mut peer, now);
                outcome(&[&result
                    .as_ref()
                    .map(|_| "ok".to_owned())
                    .unwrap_or_else(error_kind)])
            })
        },
    }
}

/// The SFU's offer of a new track to a participant whose own offer it answered.
fn offering_peer(now: Instant) -> (Peer, String) {
    let mut peer = answered_peer("chromium-camera.sdp", now);
    peer.add_outbound(Codec::Vp8, 0x5eed_0001, "Practitioner/dr-1", "t1")
        .expect("an outbound track");
    peer.add_outbound(Codec::Opus, 0x5eed_0002, "Practitioner/dr-1", "t2")
        .expect("an outbound track");
    let offer = peer.create_offer(now).expect("the SFU's offer");
    (peer, offer)
}

struct AnswerHarness {
    peer: Peer,
    now: Instant,
    inputs: u32,
}

impl Harness for AnswerHarness {
    fn run(&mut self, data: &[u8]) -> u64 {
        // A fresh session now and then, so that state from earlier inputs stays shallow.
        self.inputs += 1;
        if self.inputs.is_multiple_of(64) || !self.peer.is_negotiating() {
            self.peer = offering_peer(self.now).0;
        }
        let result = self.peer.accept_answer(self.now, &text(data));
        drain(&mut self.peer, self.now);
        outcome(&[&result
            .as_ref()
            .map(|_| "ok".to_owned())
            .unwrap_or_else(error_kind)])
    }
}

pub fn answer() -> Target {
    Target {
        name: "sdp-answer",
        entry: "sfu::webrtc::Peer::accept_answer (the answer to the SFU's offer of new tracks)",
        grammar: Grammar::Sdp,
        max_len: 64 * 1024,
        dict: SDP_DICT,
        seeds: || {
            // A participant's answer, made by the client side of the same stack.
            let now = Instant::now();
            let (_, offer) = offering_peer(now);
            let mut client =
                Peer::new(Side::Client, SocketAddr::from(([127, 0, 0, 1], 50000)), now)
                    .expect("a client peer");
            let answer = client
                .accept_offer(now, &offer)
                .expect("the client answers");
            // And as browsers vary it: a track refused, a direction narrowed.
            let refused = answer.replacen("m=video 9", "m=video 0", 1);
            let narrowed = answer.replace("a=sendrecv", "a=recvonly");
            vec![
                answer.into_bytes(),
                refused.into_bytes(),
                narrowed.into_bytes(),
            ]
        },
        build: || {
            let now = Instant::now();
            Box::new(AnswerHarness {
                peer: offering_peer(now).0,
                now,
                inputs: 0,
            })
        },
    }
}

struct CandidateHarness {
    peer: Peer,
    now: Instant,
    inputs: u32,
}

impl Harness for CandidateHarness {
    fn run(&mut self, data: &[u8]) -> u64 {
        self.inputs += 1;
        if self.inputs.is_multiple_of(512) {
            self.peer = answered_peer("chromium-camera.sdp", self.now);
        }
        // As `{"type": "ice", "candidate": {...}}` carries it: the line, then the mid.
        let input = text(data);
        let (line, mid) = input.split_once('\n').unwrap_or((&input, "0"));
        let mid = (!mid.is_empty()).then(|| mid.to_owned());
        let m_line = mid.as_deref().and_then(|m| m.parse().ok());
        let result = self.peer.add_remote_candidate(line, mid, m_line);
        drain(&mut self.peer, self.now);
        outcome(&[&result
            .as_ref()
            .map(|_| "ok".to_owned())
            .unwrap_or_else(error_kind)])
    }
}

pub fn candidate() -> Target {
    Target {
        name: "ice-candidate",
        entry: "sfu::webrtc::Peer::add_remote_candidate (a trickled candidate)",
        grammar: Grammar::Sdp,
        max_len: 4096,
        dict: &[
            b"candidate:",
            b"typ host",
            b"typ srflx",
            b"typ relay",
            b"typ prflx",
            b"raddr",
            b"rport",
            b"tcptype passive",
            b"tcptype active",
            b"tcptype so",
            b"generation 0",
            b"ufrag Wv3q",
            b"network-cost 999",
            b"udp",
            b"tcp",
            b"UDP",
            b"2122260223",
            b"::1",
            b"fe80::1%eth0",
            b"x.local",
            b"\n0",
            b"\n1",
            b"\n",
        ],
        seeds: || {
            [
                "candidate:842163049 1 udp 1677729535 192.0.2.7 46154 typ srflx raddr 10.0.0.2 rport 46154 generation 0 ufrag Wv3q network-cost 999\n0",
                "candidate:1 1 udp 2122260223 10.0.0.2 54321 typ host generation 0\n1",
                "candidate:2 1 tcp 1518280447 10.0.0.2 9 typ host tcptype active generation 0\n0",
                "candidate:3 1 udp 2122262783 2001:db8::7 54322 typ host\n0",
                "candidate:4 1 udp 2122260223 3c1e0fb7-8a2b-4c1d-9e3f-5a6b7c8d9e0f.local 54323 typ host\n0",
                "candidate:5 1 udp 41885439 198.51.100.3 3478 typ relay raddr 192.0.2.7 rport 46154\n2",
                "\n0",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
        },
        build: || {
            let now = Instant::now();
            Box::new(CandidateHarness {
                peer: answered_peer("chromium-camera.sdp", now),
                now,
                inputs: 0,
            })
        },
    }
}

struct DatagramHarness {
    peer: Peer,
    now: Instant,
    inputs: u32,
}

impl Harness for DatagramHarness {
    fn run(&mut self, data: &[u8]) -> u64 {
        self.inputs += 1;
        if self.inputs.is_multiple_of(256) {
            self.peer = answered_peer("chromium-camera.sdp", self.now);
        }
        let from = SocketAddr::from(([192, 0, 2, 7], 46154));
        self.peer.handle_datagram(self.now, from, data);
        let mut sent = 0;
        while self.peer.poll_transmit().is_some() && sent < 256 {
            sent += 1;
        }
        drain(&mut self.peer, self.now);
        // Numbers as letters: `outcome` leaves digits out.
        let replies = "r".repeat(sent.min(3));
        outcome(&[&format!(
            "{replies} {:?}",
            metaclinic_sfu::webrtc::stun::classify(data)
        )])
    }
}

pub fn datagram() -> Target {
    Target {
        name: "peer-datagram",
        entry: "sfu::webrtc::Peer::handle_datagram (a session before DTLS: STUN checks, ClientHello, early RTP)",
        grammar: Grammar::Bytes,
        max_len: 1500,
        dict: &[
            b"\x00\x01",
            b"\x21\x12\xa4\x42",
            b"\x00\x06",
            b"\x00\x08\x00\x14",
            b"\x80\x28\x00\x04",
            b"00aa11bb:Wv3q",
            b"\x16\xfe\xfd",
            b"\x16\xfe\xff",
            b"\x15\xfe\xfd",
            b"\x14\xfe\xfd",
            b"\x17\xfe\xfd",
            b"\x01\x00",
            b"\x00\x0e",
        ],
        seeds: || {
            let mut s = vec![
                packets::binding_request(LOCAL_UFRAG, REMOTE_UFRAG, LOCAL_PWD, 11),
                packets::binding_request(LOCAL_UFRAG, REMOTE_UFRAG, "wrongwrongwrongwrong", 12),
                packets::dtls_client_hello(),
            ];
            s.extend(packets::rtp_seeds().into_iter().take(2));
            s.extend(packets::rtcp_seeds().into_iter().take(2));
            s
        },
        build: || {
            let now = Instant::now();
            Box::new(DatagramHarness {
                peer: answered_peer("chromium-camera.sdp", now),
                now,
                inputs: 0,
            })
        },
    }
}
