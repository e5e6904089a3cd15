//! Which session a datagram on the shared port belongs to. STUN requests name the session by
//! the username fragment we gave it; once its ICE agent has answered a check from an address
//! (proving the sender knows the session's password), that 5-tuple routes DTLS and SRTP.
//! Anything else is dropped here with a reason, before any peer parses it.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::metrics::DropReason;
use crate::webrtc::stun::{self, DatagramKind, StunTarget};

pub use crate::session::SessionKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A STUN request for this session from an address it may not know yet, naming this
    /// remote ufrag as its sender.
    Check(SessionKey, String),
    /// From an address this session has verified.
    Known(SessionKey),
    Drop(DropReason),
}

#[derive(Default)]
pub struct Demux {
    by_ufrag: HashMap<String, SessionKey>,
    by_addr: HashMap<SocketAddr, SessionKey>,
}

impl Demux {
    pub fn add_session(&mut self, ufrag: String, key: SessionKey) {
        self.by_ufrag.insert(ufrag, key);
    }

    pub fn has_ufrag(&self, ufrag: &str) -> bool {
        self.by_ufrag.contains_key(ufrag)
    }

    /// `from` passed a connectivity check of `key`'s session.
    pub fn bind(&mut self, from: SocketAddr, key: SessionKey) {
        self.by_addr.insert(from, key);
    }

    /// `from` no longer routes to its session (it moved on).
    pub fn unbind(&mut self, from: &SocketAddr) {
        self.by_addr.remove(from);
    }

    pub fn remove_session(&mut self, ufrag: &str, addrs: &[SocketAddr]) {
        self.by_ufrag.remove(ufrag);
        for a in addrs {
            self.by_addr.remove(a);
        }
    }

    pub fn sessions(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn route(&self, from: SocketAddr, data: &[u8], truncated: bool) -> Route {
        if truncated {
            return Route::Drop(DropReason::Oversized);
        }
        let known = self.by_addr.get(&from).copied();
        match stun::classify(data) {
            DatagramKind::Unknown => Route::Drop(DropReason::Unclassifiable),
            DatagramKind::Stun => match stun::target(data) {
                StunTarget::Ufrag(ufrag, remote) => match self.by_ufrag.get(&ufrag) {
                    Some(&key) => Route::Check(key, remote),
                    None => Route::Drop(DropReason::UnknownUfrag),
                },
                StunTarget::NoUsername => {
                    known.map_or(Route::Drop(DropReason::UnknownPeer), Route::Known)
                }
                StunTarget::Malformed => Route::Drop(DropReason::MalformedStun),
            },
            DatagramKind::Dtls => known.map_or(Route::Drop(DropReason::UnknownPeer), Route::Known),
            DatagramKind::RtpOrRtcp => {
                if !rtp_or_rtcp_header_fits(data) {
                    Route::Drop(DropReason::TruncatedRtp)
                } else {
                    known.map_or(Route::Drop(DropReason::UnknownPeer), Route::Known)
                }
            }
        }
    }
}

/// The SSRC of an (S)RTP packet (not RTCP), read from its clear-text header.
pub fn rtp_ssrc(p: &[u8]) -> Option<u32> {
    if stun::classify(p) != DatagramKind::RtpOrRtcp || p.len() < 12 || (192..=223).contains(&p[1]) {
        return None;
    }
    Some(u32::from_be_bytes([p[8], p[9], p[10], p[11]]))
}

/// Does the (S)RTP or (S)RTCP header fit in the datagram, as its own fields describe it?
pub fn rtp_or_rtcp_header_fits(p: &[u8]) -> bool {
    if p.len() < 8 || p[0] >> 6 != 2 {
        return false;
    }
    // RFC 5761 §4: RTCP packet types 192..=223 sit where RTP's marker + payload type would.
    if (192..=223).contains(&p[1]) {
        let words = u16::from_be_bytes([p[2], p[3]]) as usize;
        return (words + 1) * 4 <= p.len();
    }
    let csrc = (p[0] & 0x0f) as usize;
    let mut len = 12 + 4 * csrc;
    if p[0] & 0x10 != 0 {
        let Some(ext) = p.get(len + 2..len + 4) else {
            return false;
        };
        len += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
    }
    len <= p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn rtp_headers_must_fit() {
        let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        assert!(rtp_or_rtcp_header_fits(&rtp));
        assert!(!rtp_or_rtcp_header_fits(&rtp[..11]));
        rtp[0] = 0x82; // two CSRCs that are not there
        assert!(!rtp_or_rtcp_header_fits(&rtp));
        rtp[0] = 0x90; // an extension header that is not there
        assert!(!rtp_or_rtcp_header_fits(&rtp));
        rtp.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
        assert!(rtp_or_rtcp_header_fits(&rtp));
        // RTCP receiver report claiming 7 words with 2 present.
        assert!(!rtp_or_rtcp_header_fits(&[0x81, 201, 0, 7, 0, 0, 0, 1]));
        assert!(rtp_or_rtcp_header_fits(&[0x80, 201, 0, 1, 0, 0, 0, 1]));
    }

    #[test]
    fn strangers_are_dropped_with_reasons() {
        let mut d = Demux::default();
        d.add_session("abcd".into(), 3);
        assert_eq!(
            d.route(addr(1), &[0xff, 0, 0], false),
            Route::Drop(DropReason::Unclassifiable)
        );
        assert_eq!(
            d.route(addr(1), &[22; 40], false),
            Route::Drop(DropReason::UnknownPeer)
        );
        assert_eq!(
            d.route(addr(1), &[0x80; 1200], true),
            Route::Drop(DropReason::Oversized)
        );
        assert_eq!(
            d.route(addr(1), &[0x80, 96, 0], false),
            Route::Drop(DropReason::TruncatedRtp)
        );
        assert_eq!(
            d.route(addr(1), &[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], false),
            Route::Drop(DropReason::UnknownPeer)
        );
        d.bind(addr(1), 3);
        assert_eq!(d.route(addr(1), &[22; 40], false), Route::Known(3));
        d.remove_session("abcd", &[addr(1)]);
        assert_eq!(
            d.route(addr(1), &[22; 40], false),
            Route::Drop(DropReason::UnknownPeer)
        );
    }
}
