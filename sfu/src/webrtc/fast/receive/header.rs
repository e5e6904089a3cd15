//! Reading a received RTP header (RFC 3550 §5.1) and its extensions (RFC 8285: the one-byte
//! and the two-byte form), without copying anything.

/// What one received packet's header says, and where its parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReceivedHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Where the payload starts.
    pub len: usize,
    /// The extension elements' span, and whether they use the two-byte form.
    extensions: Option<(usize, usize, bool)>,
}

impl ReceivedHeader {
    /// Reads the header at the start of `packet`; `None` if it is not a whole RTP header.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        if packet.len() < 12 || packet[0] >> 6 != 2 {
            return None;
        }
        let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
        let mut extensions = None;
        if packet[0] & 0x10 != 0 {
            let block = packet.get(len..len + 4)?;
            let profile = u16::from_be_bytes([block[0], block[1]]);
            let words = usize::from(u16::from_be_bytes([block[2], block[3]]));
            let start = len + 4;
            len = start + 4 * words;
            let form = match profile {
                0xbede => Some(false),
                p if p & 0xfff0 == 0x1000 => Some(true),
                // Another profile's extension: skipped, never read.
                _ => None,
            };
            extensions = form.map(|two_byte| (start, len, two_byte));
        }
        if len > packet.len() {
            return None;
        }
        Some(Self {
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7f,
            sequence_number: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            len,
            extensions,
        })
    }

    /// The value of extension `id` in `packet` (the packet this header was read from).
    pub fn extension<'a>(&self, packet: &'a [u8], id: u8) -> Option<&'a [u8]> {
        let (start, end, two_byte) = self.extensions?;
        let elements = packet.get(start..end)?;
        let mut at = 0;
        while at < elements.len() {
            let (element_id, value_len, value_at) = if two_byte {
                let element_id = elements[at];
                if element_id == 0 {
                    at += 1; // padding
                    continue;
                }
                (element_id, usize::from(*elements.get(at + 1)?), at + 2)
            } else {
                let b = elements[at];
                match b >> 4 {
                    0 => {
                        at += 1; // padding
                        continue;
                    }
                    // RFC 8285 §4.2: id 15 stops the reading.
                    15 => return None,
                    element_id => (element_id, usize::from(b & 0x0f) + 1, at + 1),
                }
            };
            let value = elements.get(value_at..value_at + value_len)?;
            if element_id == id {
                return Some(value);
            }
            at = value_at + value_len;
        }
        None
    }

    /// Where the payload ends in `packet`: before its padding (the P bit), or `None` if
    /// the padding does not fit.
    pub fn payload_end(&self, packet: &[u8]) -> Option<usize> {
        if packet.first()? & 0x20 == 0 {
            return Some(packet.len());
        }
        let padding = usize::from(*packet.last()?);
        if padding == 0 || self.len + padding > packet.len() {
            return None;
        }
        Some(packet.len() - padding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Marshal;

    fn rtc_packet(extensions: &[(u8, &[u8])], two_byte: bool, padding: u8) -> Vec<u8> {
        let mut header = rtc::rtp::header::Header {
            version: 2,
            marker: true,
            payload_type: 96,
            sequence_number: 4242,
            timestamp: 90_000,
            ssrc: 0xfeed_f00d,
            ..Default::default()
        };
        header.extension_profile = if two_byte { 0x1000 } else { 0xbede };
        for &(id, value) in extensions {
            header
                .set_extension(id, bytes::Bytes::copy_from_slice(value))
                .unwrap();
        }
        let mut packet = rtc::rtp::packet::Packet {
            header,
            payload: bytes::Bytes::from_static(b"payload"),
        }
        .marshal()
        .unwrap()
        .to_vec();
        if padding > 0 {
            packet[0] |= 0x20;
            packet.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
            packet.push(padding);
        }
        packet
    }

    #[test]
    fn reads_what_rtc_writes_in_both_extension_forms() {
        for two_byte in [false, true] {
            let p = rtc_packet(
                &[(3, &[0xab, 0xcd]), (1, &[0x85]), (10, b"hi")],
                two_byte,
                0,
            );
            let h = ReceivedHeader::parse(&p).unwrap();
            assert!(h.marker);
            assert_eq!(
                (h.payload_type, h.sequence_number, h.timestamp, h.ssrc),
                (96, 4242, 90_000, 0xfeed_f00d)
            );
            assert_eq!(h.extension(&p, 3), Some(&[0xab, 0xcd][..]));
            assert_eq!(h.extension(&p, 1), Some(&[0x85][..]));
            assert_eq!(h.extension(&p, 10), Some(&b"hi"[..]));
            assert_eq!(h.extension(&p, 4), None);
            assert_eq!(&p[h.len..], b"payload");
        }
    }

    #[test]
    fn padding_is_left_out_of_the_payload() {
        let p = rtc_packet(&[], false, 4);
        let h = ReceivedHeader::parse(&p).unwrap();
        let end = h.payload_end(&p).unwrap();
        assert_eq!(&p[h.len..end], b"payload");
        // Padding longer than the packet is no packet.
        let mut long = p.clone();
        *long.last_mut().unwrap() = 200;
        assert_eq!(h.payload_end(&long), None);
    }

    #[test]
    fn hostile_headers_are_refused_not_read_past() {
        assert_eq!(ReceivedHeader::parse(&[0x80; 11]), None);
        // Version 1.
        assert_eq!(ReceivedHeader::parse(&[0x40; 20]), None);
        // Fifteen CSRCs in a short packet.
        assert_eq!(ReceivedHeader::parse(&[0x8f; 40]), None);
        // An extension block claiming more words than there are.
        let mut p = vec![
            0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe, 0xde, 0x00, 0x09,
        ];
        p.extend([0x10, 0xff, 0, 0]);
        assert_eq!(ReceivedHeader::parse(&p), None);
        // An element whose value runs past its block.
        let mut p = vec![
            0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe, 0xde, 0x00, 0x01,
        ];
        p.extend([0x1f, 0xff, 0, 0]);
        let h = ReceivedHeader::parse(&p).unwrap();
        assert_eq!(h.extension(&p, 1), None);
        assert_eq!(h.extension(&p, 2), None);
    }
}
