//! What arrives on the media port, before any peer parses it: the demultiplexer's route, the
//! STUN username it reads, the RTP and RTCP header checks, the simulcast header-extension
//! reader that admits unannounced SSRCs, and the WebRTC stack's RTP and RTCP parsers behind
//! them (reached by any participant, after SRTP).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Buf;
use metaclinic_sfu::metrics::DropReason;
use metaclinic_sfu::shard::demux::{self, Demux, Route};
use metaclinic_sfu::shard::tcp::shard_of_ufrag;
use metaclinic_sfu::webrtc::Peer;
use metaclinic_sfu::webrtc::stun::{self, DatagramKind, StunTarget};
use rtc::shared::marshal::{Marshal, Unmarshal};

use super::packets::{self, LOCAL_UFRAG};
use super::{Harness, Target, outcome};
use crate::mutate::Grammar;

const STUN_DICT: &[&[u8]] = &[
    b"\x00\x01",
    b"\x01\x01",
    b"\x00\x11",
    b"\x21\x12\xa4\x42",
    b"\x00\x06\x00\x0d",
    b"\x00\x08\x00\x14",
    b"\x80\x28\x00\x04",
    b"\x00\x24\x00\x04",
    b"\x00\x25\x00\x00",
    b"\x80\x2a\x00\x08",
    b"\x00\x20\x00\x08",
    b"00aa11bb:Wv3q",
    b"01cc22dd:",
    b":",
    b"\xbe\xde",
    b"\x10\x00",
    b"\x16\xfe\xfd",
];

/// A session the demux targets know (shard 0), bound to one address; another from shard 1.
fn demux_fixture() -> (Demux, SocketAddr) {
    let mut d = Demux::default();
    d.add_session(LOCAL_UFRAG.into(), 1);
    d.add_session("01cc22dd".into(), 2);
    let bound = SocketAddr::from(([127, 0, 0, 1], 5000));
    d.bind(bound, 1);
    (d, bound)
}

/// As RFC 8839 allows (and `stun` lets through): 4 to 256 of a small character set.
fn looks_like_ufrag(s: &str) -> bool {
    (4..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/-_=.".contains(&b))
}

pub fn demux() -> Target {
    Target {
        name: "demux",
        entry: "sfu::shard::demux::Demux::route",
        grammar: Grammar::Bytes,
        max_len: 2048,
        dict: STUN_DICT,
        seeds: || {
            let mut s = packets::stun_seeds();
            s.push(packets::dtls_client_hello());
            s.extend(packets::rtp_seeds());
            s.extend(packets::rtcp_seeds());
            s
        },
        build: || {
            let (d, bound) = demux_fixture();
            let stranger = SocketAddr::from(([192, 0, 2, 7], 40000));
            Box::new(move |data: &[u8]| {
                let from_bound = d.route(bound, data, false);
                let from_stranger = d.route(stranger, data, false);
                assert_eq!(
                    d.route(bound, data, true),
                    Route::Drop(DropReason::Oversized),
                    "a truncated datagram is dropped whatever it holds"
                );
                for (route, known) in [(&from_bound, true), (&from_stranger, false)] {
                    match route {
                        Route::Check(key, remote) => {
                            assert_eq!(stun::classify(data), DatagramKind::Stun);
                            let StunTarget::Ufrag(local, r) = stun::target(data) else {
                                panic!("invariant: a check routed without a ufrag");
                            };
                            assert_eq!(&r, remote);
                            assert!(matches!(
                                (local.as_str(), key),
                                (LOCAL_UFRAG, 1) | ("01cc22dd", 2)
                            ));
                        }
                        Route::Known(key) => {
                            assert!(
                                known && *key == 1,
                                "invariant: {route:?} for an address never bound"
                            );
                        }
                        Route::Drop(DropReason::TruncatedRtp) => {
                            assert!(!demux::rtp_or_rtcp_header_fits(data));
                        }
                        Route::Drop(_) => {}
                    }
                }
                outcome(&[
                    &format!("{:?}", route_kind(&from_bound)),
                    &format!("{:?}", route_kind(&from_stranger)),
                ])
            })
        },
    }
}

/// A route without the client's bytes in it.
fn route_kind(r: &Route) -> String {
    match r {
        Route::Check(k, _) => format!("check {k}"),
        Route::Known(k) => format!("known {k}"),
        Route::Drop(reason) => format!("drop {reason:?}"),
    }
}

pub fn stun() -> Target {
    Target {
        name: "stun",
        entry: "sfu::webrtc::stun::{classify, target}, sfu::shard::tcp::shard_of_ufrag",
        grammar: Grammar::Bytes,
        max_len: 1600,
        dict: STUN_DICT,
        seeds: packets::stun_seeds,
        build: || {
            Box::new(|data: &[u8]| {
                let kind = stun::classify(data);
                let target = stun::target(data);
                let _ = stun::is_binding_success(data);
                let shard = match &target {
                    StunTarget::Ufrag(local, remote) => {
                        // `target` does not look at the first byte: the demultiplexer calls it
                        // only after `classify` (ICE-TCP's first check does not).
                        assert!(
                            looks_like_ufrag(local) && looks_like_ufrag(remote),
                            "invariant: a ufrag with bytes that may reach the log"
                        );
                        shard_of_ufrag(local).is_some()
                    }
                    _ => false,
                };
                let target = match target {
                    StunTarget::Ufrag(..) => "ufrag",
                    StunTarget::NoUsername => "no username",
                    StunTarget::Malformed => "malformed",
                };
                outcome(&[&format!("{kind:?} {target} {shard} {}", data.len() % 4)])
            })
        },
    }
}

/// A publisher's session while its first packets arrive: its simulcast offer (layers by
/// RID, no SSRCs announced) answered.
fn simulcast_peer() -> Peer {
    super::peer::answered_peer("chromium-simulcast.sdp", Instant::now())
}

/// Inputs a peer sees before it is rebuilt (its learned SSRCs fill up).
const PEER_INPUTS: u32 = 4096;

struct RtpHarness {
    peer: Peer,
    inputs: u32,
}

impl Harness for RtpHarness {
    fn run(&mut self, data: &[u8]) -> u64 {
        let fits = demux::rtp_or_rtcp_header_fits(data);
        let ssrc = demux::rtp_ssrc(data);
        if ssrc.is_some() {
            assert!(
                data.len() >= 12 && data[0] >> 6 == 2,
                "invariant: an SSRC from no RTP header"
            );
        }
        // In the product, only a datagram whose header fits reaches the SSRC check.
        let admitted = match ssrc {
            Some(ssrc) if fits => {
                self.inputs += 1;
                if self.inputs >= PEER_INPUTS {
                    self.peer = simulcast_peer();
                    self.inputs = 0;
                }
                Some(self.peer.admits_inbound_rtp(ssrc, data))
            }
            _ => None,
        };
        let parsed = rtc::rtp::packet::Packet::unmarshal(&mut &data[..]);
        let reencoded = match &parsed {
            Ok(p) => p.marshal().map(|b| b.len()).ok(),
            Err(_) => None,
        };
        let admitted = admitted.map_or("-", |a| if a { "admitted" } else { "refused" });
        outcome(&[&format!(
            "{fits} {} {admitted} {} {}",
            ssrc.is_some(),
            parsed.as_ref().map(|_| "ok").unwrap_or("err"),
            reencoded.is_some()
        )])
    }
}

pub fn rtp() -> Target {
    Target {
        name: "rtp",
        entry: "sfu::shard::demux::{rtp_or_rtcp_header_fits, rtp_ssrc}, sfu::webrtc::Peer::admits_inbound_rtp, rtc::rtp::packet::Packet::unmarshal",
        grammar: Grammar::Bytes,
        max_len: 1500,
        dict: &[
            b"\xbe\xde",
            b"\x10\x00",
            b"\x90\x60",
            b"\x80\x6f",
            b"\x40\x31",
            b"\xa0\x71",
        ],
        seeds: packets::rtp_seeds,
        build: || {
            Box::new(RtpHarness {
                peer: simulcast_peer(),
                inputs: 0,
            })
        },
    }
}

pub fn rtcp() -> Target {
    Target {
        name: "rtcp",
        entry: "sfu::shard::demux::rtp_or_rtcp_header_fits, rtc::rtcp::packet::unmarshal",
        grammar: Grammar::Bytes,
        max_len: 1500,
        dict: &[
            b"\x81\xc8",
            b"\x81\xc9",
            b"\x81\xca",
            b"\x81\xcb",
            b"\x81\xcd",
            b"\x8f\xcd",
            b"\x81\xce",
            b"\x84\xce",
            b"\x8f\xce",
            b"REMB",
        ],
        seeds: packets::rtcp_seeds,
        build: || {
            Box::new(|data: &[u8]| {
                let fits = demux::rtp_or_rtcp_header_fits(data);
                let mut buf = data;
                let parsed = rtc::rtcp::packet::unmarshal(&mut buf);
                let kinds = match &parsed {
                    Ok(packets) => {
                        let mut kinds = std::collections::BTreeSet::new();
                        for p in packets {
                            // What the SFU reads of every packet: its type and its SSRCs
                            // (and `Debug` in the stack's trace logs). Not `Display`: rtc-rtcp
                            // 0.21.1's REMB `Display` indexes past its unit table for rates
                            // of 1e21 bit/s and more, and nothing in the product prints it.
                            let _ = p.destination_ssrc();
                            let _ = format!("{p:?}");
                            kinds.insert(format!("{:?}", p.header().packet_type));
                        }
                        let _ = rtc::rtcp::packet::marshal(packets);
                        format!("{kinds:?}").replace('"', "'")
                    }
                    Err(e) => e.to_string(),
                };
                let _ = buf.remaining();
                outcome(&[&format!("{fits}"), &kinds])
            })
        },
    }
}
