//! An RTP header (RFC 3550 §5.1) with one-byte header extensions (RFC 8285 §4.2), written
//! straight into a buffer.

/// The longest header we write: 12 fixed bytes, the extension block's 4, and at most four
/// elements (transport-wide sequence number, mid, rid, audio level) padded to a word.
pub(crate) const MAX_HEADER: usize = 12 + 4 + 3 + 17 + 17 + 2 + 3;

/// One-byte extension values are 1 to 16 bytes long.
const MAX_ELEMENT: usize = 16;

/// What one packet's header says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderFields<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The transport-wide sequence number's extension id, if negotiated; the number itself is
    /// written later (see [`set_transport_sequence`]), when the packet is sent.
    pub transport_cc: Option<u8>,
    /// Other one-byte extensions, `(id, value)`: mid and rid (simulcast), the audio level.
    pub extensions: [Option<(u8, &'a [u8])>; 3],
}

/// Writes `fields` at the start of `buf`. Returns the header's length and where the
/// transport-wide sequence number goes, or `None` when `buf` is too short. An extension with
/// an id outside 1..=14 or a value outside 1..=16 bytes is left out (the one-byte form cannot
/// carry it).
pub(crate) fn write_header(
    buf: &mut [u8],
    fields: &HeaderFields,
) -> Option<(usize, Option<usize>)> {
    if buf.len() < MAX_HEADER {
        return None;
    }
    let usable = |id: u8, len: usize| (1..=14).contains(&id) && (1..=MAX_ELEMENT).contains(&len);
    let twcc = fields.transport_cc.filter(|&id| usable(id, 2));
    let others = fields
        .extensions
        .iter()
        .flatten()
        .filter(|(id, v)| usable(*id, v.len()));
    let has_extensions = twcc.is_some() || others.clone().next().is_some();
    buf[0] = 0x80 | if has_extensions { 0x10 } else { 0 };
    buf[1] = (u8::from(fields.marker) << 7) | (fields.payload_type & 0x7f);
    buf[2..4].copy_from_slice(&fields.sequence_number.to_be_bytes());
    buf[4..8].copy_from_slice(&fields.timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&fields.ssrc.to_be_bytes());
    if !has_extensions {
        return Some((12, None));
    }
    buf[12..14].copy_from_slice(&[0xbe, 0xde]);
    let mut at = 16;
    let mut twcc_at = None;
    if let Some(id) = twcc {
        buf[at] = id << 4 | 1;
        buf[at + 1..at + 3].fill(0);
        twcc_at = Some(at + 1);
        at += 3;
    }
    for (id, value) in others {
        buf[at] = id << 4 | (value.len() as u8 - 1);
        buf[at + 1..at + 1 + value.len()].copy_from_slice(value);
        at += 1 + value.len();
    }
    let padded = at.next_multiple_of(4);
    buf[at..padded].fill(0);
    let words = (padded - 16) / 4;
    buf[14..16].copy_from_slice(&(words as u16).to_be_bytes());
    Some((padded, twcc_at))
}

/// Writes a transport-wide sequence number where [`write_header`] left room for it.
pub(crate) fn set_transport_sequence(header: &mut [u8], at: usize, sequence: u16) {
    if let Some(slot) = header.get_mut(at..at + 2) {
        slot.copy_from_slice(&sequence.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::{MarshalSize, Unmarshal};

    fn parse(buf: &[u8]) -> rtc::rtp::header::Header {
        rtc::rtp::header::Header::unmarshal(&mut &buf[..]).expect("rtc reads our header")
    }

    #[test]
    fn a_plain_header_reads_back_in_rtc() {
        let mut buf = [0u8; 128];
        let fields = HeaderFields {
            marker: true,
            payload_type: 96,
            sequence_number: 65535,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
            transport_cc: None,
            extensions: [None; 3],
        };
        let (len, twcc) = write_header(&mut buf, &fields).unwrap();
        assert_eq!((len, twcc), (12, None));
        let h = parse(&buf[..len]);
        assert!(h.marker && !h.extension);
        assert_eq!(
            (h.payload_type, h.sequence_number, h.timestamp, h.ssrc),
            (96, 65535, 0xdead_beef, 0x1234_5678)
        );
    }

    #[test]
    fn extensions_read_back_in_rtc_with_the_sequence_set_later() {
        let mut buf = [0u8; 128];
        let fields = HeaderFields {
            marker: false,
            payload_type: 111,
            sequence_number: 7,
            timestamp: 960,
            ssrc: 42,
            transport_cc: Some(3),
            extensions: [Some((4, b"0")), Some((10, b"hi")), Some((1, &[0x7f]))],
        };
        let (len, twcc) = write_header(&mut buf, &fields).unwrap();
        assert_eq!(len % 4, 0);
        set_transport_sequence(&mut buf, twcc.unwrap(), 0xabcd);
        let h = parse(&buf[..len]);
        assert!(h.extension);
        assert_eq!(h.get_extension(3).unwrap().as_ref(), &[0xab, 0xcd]);
        assert_eq!(h.get_extension(4).unwrap().as_ref(), b"0");
        assert_eq!(h.get_extension(10).unwrap().as_ref(), b"hi");
        assert_eq!(h.get_extension(1).unwrap().as_ref(), &[0x7f]);
        assert_eq!(h.marshal_size(), len);
    }

    #[test]
    fn what_the_one_byte_form_cannot_carry_is_left_out() {
        let mut buf = [0u8; 128];
        let long = [b'x'; 17];
        let fields = HeaderFields {
            marker: false,
            payload_type: 96,
            sequence_number: 1,
            timestamp: 1,
            ssrc: 1,
            transport_cc: Some(15),
            extensions: [Some((0, b"a")), Some((5, &long)), Some((6, b""))],
        };
        assert_eq!(write_header(&mut buf, &fields), Some((12, None)));
        assert_eq!(write_header(&mut buf[..20], &fields), None);
    }
}
