//! Simulcast as the SDP and the RTP header describe it: which RTP stream ids (RIDs, RFC 8851)
//! each media section of the remote's description announces, and the MID and RID header
//! extensions (RFC 8843, RFC 8852) read from a packet's plaintext header.
//!
//! Browsers declare no `a=ssrc` for simulcast layers: a layer's SSRC is first seen on the
//! wire, named by the extensions. Reading them before decryption lets the SFU admit exactly
//! the layers the description announced and refuse every other SSRC unopened.

use std::collections::HashMap;

pub(super) const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
pub(super) const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub(super) const REPAIRED_RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

/// SSRCs admitted per announced (mid, rid): the layer and its retransmission stream.
const SSRCS_PER_RID: usize = 2;

/// What a remote description says about simulcast.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct SimulcastSdp {
    pub mid_ext: Option<u8>,
    pub rid_ext: Option<u8>,
    pub repaired_rid_ext: Option<u8>,
    /// Per media section (by mid), the RIDs it receives or sends, in `a=simulcast` order.
    pub rids: HashMap<String, Vec<String>>,
}

impl SimulcastSdp {
    pub fn parse(sdp: &str) -> SimulcastSdp {
        let mut out = SimulcastSdp {
            mid_ext: super::extmap_id(sdp, MID_URI),
            rid_ext: super::extmap_id(sdp, RID_URI),
            repaired_rid_ext: super::extmap_id(sdp, REPAIRED_RID_URI),
            rids: HashMap::new(),
        };
        let Some(d) = super::read_sdp(sdp) else {
            return out;
        };
        for section in &d.media_descriptions {
            let Some(Some(mid)) = section.attribute("mid") else {
                continue;
            };
            let values = |key: &'static str| {
                section
                    .attributes
                    .iter()
                    .filter(move |a| a.key == key)
                    .filter_map(|a| a.value.as_deref())
            };
            let declared: Vec<String> = values("rid")
                .filter_map(|v| v.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            if declared.is_empty() {
                continue;
            }
            // `send q;h;f` (or `recv ...`), alternatives split by commas, paused ~.
            let mut order: Vec<String> = Vec::new();
            for value in values("simulcast") {
                let mut words = value.split_whitespace();
                while let (Some(_dir), Some(list)) = (words.next(), words.next()) {
                    for id in list.split([';', ',']) {
                        let id = id.trim_start_matches('~');
                        if !id.is_empty() && !order.iter().any(|o| o == id) {
                            order.push(id.to_owned());
                        }
                    }
                }
            }
            // The simulcast attribute orders them; any it does not name keep `a=rid` order.
            let mut rids: Vec<String> =
                order.into_iter().filter(|o| declared.contains(o)).collect();
            for d in declared {
                if !rids.contains(&d) {
                    rids.push(d);
                }
            }
            rids.truncate(8);
            out.rids.insert(mid.trim().to_owned(), rids);
        }
        out
    }

    /// The index of `rid` among the layers of section `mid`.
    pub fn layer_of(&self, mid: &str, rid: &str) -> Option<usize> {
        self.rids.get(mid)?.iter().position(|r| r == rid)
    }

    pub fn is_empty(&self) -> bool {
        self.rids.is_empty()
    }
}

/// Simulcast SSRCs admitted so far, so that each announced layer admits only a few.
#[derive(Debug, Default)]
pub(super) struct LearnedSsrcs {
    by_layer: HashMap<(String, String), Vec<u32>>,
}

impl LearnedSsrcs {
    /// Admit `ssrc` if the packet's header names an announced layer that has room left.
    pub fn admit(&mut self, sdp: &SimulcastSdp, packet: &[u8], ssrc: u32) -> bool {
        let Some(mid_ext) = sdp.mid_ext else {
            return false;
        };
        let Some(mid) = header_extension(packet, mid_ext) else {
            return false;
        };
        let rid = [sdp.rid_ext, sdp.repaired_rid_ext]
            .into_iter()
            .flatten()
            .find_map(|id| header_extension(packet, id));
        let (Ok(mid), Some(Ok(rid))) = (std::str::from_utf8(mid), rid.map(std::str::from_utf8))
        else {
            return false;
        };
        if sdp.layer_of(mid, rid).is_none() {
            return false;
        }
        let seen = self
            .by_layer
            .entry((mid.to_owned(), rid.to_owned()))
            .or_default();
        if seen.contains(&ssrc) {
            return true;
        }
        if seen.len() >= SSRCS_PER_RID {
            return false;
        }
        seen.push(ssrc);
        true
    }

    pub fn contains(&self, ssrc: u32) -> bool {
        self.by_layer.values().any(|v| v.contains(&ssrc))
    }
}

/// The value of header extension `id` in an RTP packet (RFC 8285: one-byte or two-byte form),
/// read from the plaintext header of an SRTP packet. `None` when absent or malformed.
pub(super) fn header_extension(p: &[u8], id: u8) -> Option<&[u8]> {
    if p.len() < 12 || p[0] >> 6 != 2 || p[0] & 0x10 == 0 {
        return None;
    }
    let csrcs = usize::from(p[0] & 0x0f) * 4;
    let at = 12 + csrcs;
    let profile = u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]);
    let words = usize::from(u16::from_be_bytes([*p.get(at + 2)?, *p.get(at + 3)?]));
    let body = p.get(at + 4..at + 4 + words * 4)?;
    let mut i = 0;
    match profile {
        0xBEDE => {
            while i < body.len() {
                let b = body[i];
                if b == 0 {
                    i += 1; // padding
                    continue;
                }
                let (eid, len) = (b >> 4, usize::from(b & 0x0f) + 1);
                if eid == 15 {
                    return None; // reserved: stop parsing (RFC 8285 §4.2)
                }
                let value = body.get(i + 1..i + 1 + len)?;
                if eid == id {
                    return Some(value);
                }
                i += 1 + len;
            }
            None
        }
        p if p & 0xfff0 == 0x1000 => {
            while i < body.len() {
                let eid = body[i];
                if eid == 0 {
                    i += 1;
                    continue;
                }
                let len = usize::from(*body.get(i + 1)?);
                let value = body.get(i + 2..i + 2 + len)?;
                if eid == id {
                    return Some(value);
                }
                i += 2 + len;
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
        o=- 1 1 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\n\
        a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:1\r\n\
        a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
        a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
        a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
        a=rid:f send\r\n\
        a=rid:h send\r\n\
        a=rid:q send\r\n\
        a=simulcast:send q;h;~f\r\n";

    /// An RTP header with one-byte extensions `exts` (id, value).
    fn packet(ssrc: u32, exts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, v) in exts {
            body.push((id << 4) | (v.len() as u8 - 1));
            body.extend_from_slice(v);
        }
        while body.len() % 4 != 0 {
            body.push(0);
        }
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xBE, 0xDE]);
        p.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&body);
        p.extend_from_slice(&[0xAA; 20]);
        p
    }

    #[test]
    fn rids_follow_the_simulcast_order() {
        let s = SimulcastSdp::parse(OFFER);
        assert_eq!(s.mid_ext, Some(4));
        assert_eq!(s.rid_ext, Some(10));
        assert_eq!(s.repaired_rid_ext, Some(11));
        assert_eq!(s.rids.get("1").unwrap(), &["q", "h", "f"]);
        assert!(!s.rids.contains_key("0"));
        assert_eq!(s.layer_of("1", "f"), Some(2));
    }

    #[test]
    fn extensions_are_read_in_both_forms() {
        let p = packet(7, &[(4, b"1"), (10, b"h")]);
        assert_eq!(header_extension(&p, 4), Some(&b"1"[..]));
        assert_eq!(header_extension(&p, 10), Some(&b"h"[..]));
        assert_eq!(header_extension(&p, 11), None);
        // Two-byte form (0x1000), with a padding byte between elements.
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7, 0x10, 0x00, 0, 2];
        p.extend_from_slice(&[4, 1, b'1', 0, 10, 1, b'q', 0]);
        assert_eq!(header_extension(&p, 10), Some(&b"q"[..]));
        // Truncated or lying lengths are no value, not a panic.
        for cut in 0..p.len() {
            let _ = header_extension(&p[..cut], 10);
        }
        let mut liar = packet(7, &[(4, b"1")]);
        liar[15] = 200;
        assert_eq!(header_extension(&liar, 4), None);
    }

    #[test]
    fn only_announced_layers_are_admitted_and_only_a_few_ssrcs_each() {
        let s = SimulcastSdp::parse(OFFER);
        let mut learned = LearnedSsrcs::default();
        assert!(learned.admit(&s, &packet(100, &[(4, b"1"), (10, b"q")]), 100));
        assert!(learned.admit(&s, &packet(100, &[(4, b"1"), (10, b"q")]), 100));
        // Its retransmission stream names it as repaired.
        assert!(learned.admit(&s, &packet(101, &[(4, b"1"), (11, b"q")]), 101));
        // A third SSRC claiming the same layer is refused.
        assert!(!learned.admit(&s, &packet(102, &[(4, b"1"), (10, b"q")]), 102));
        // Unannounced rid, unknown mid, no extensions at all.
        assert!(!learned.admit(&s, &packet(103, &[(4, b"1"), (10, b"x")]), 103));
        assert!(!learned.admit(&s, &packet(104, &[(4, b"7"), (10, b"q")]), 104));
        assert!(!learned.admit(&s, &packet(105, &[]), 105));
        assert!(learned.contains(101));
        assert!(!learned.contains(102));
    }
}
