//! Media as rooms and forwarding see it: our own packet and codec types, free of the WebRTC
//! library's, and the few codec facts an SFU needs (is this a keyframe?).

use bytes::Bytes;

pub use metaclinic_protocol::media::{Codec, MediaKind};

/// The codec facts forwarding needs from a payload.
pub trait KeyframeStart {
    /// Does this payload begin a keyframe? Only the packet that starts the frame says so.
    fn is_keyframe_start(&self, payload: &[u8]) -> bool;
}

impl KeyframeStart for Codec {
    fn is_keyframe_start(&self, payload: &[u8]) -> bool {
        match *self {
            Codec::Opus => false,
            Codec::Vp8 => vp8_is_keyframe_start(payload),
            Codec::H264 => h264_is_keyframe_start(payload),
        }
    }
}

/// One RTP packet, decrypted, as it moves through a room. Header extensions are not carried:
/// their ids are negotiated per connection, so forwarding strips them.
#[derive(Debug, Clone)]
pub struct RtpPacket {
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub marker: bool,
    pub payload: Bytes,
    /// The sender's audio level (RFC 6464), in -dBov: 0 is the loudest, 127 silence. Read
    /// from the header extension when the connection negotiated it.
    pub audio_level: Option<u8>,
}

impl RtpPacket {
    /// Padding-only packets are bandwidth probes between the browser and its next hop; they
    /// carry no media and are never forwarded.
    pub fn is_padding_only(&self) -> bool {
        self.payload.is_empty()
    }
}

/// What a subscriber asks of a publisher through RTCP, in our own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// PLI or FIR: the decoder needs a keyframe.
    KeyframeRequest,
}

/// VP8 payload descriptor (RFC 7741 §4.2), then the first byte of the VP8 payload header.
fn vp8_is_keyframe_start(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let extended = b0 & 0x80 != 0;
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if extended {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits, the M bit says which.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    // VP8 frame tag: bit 0 is the inverse keyframe flag.
    p.get(i).is_some_and(|&h| h & 0x01 == 0)
}

/// The picture size a VP8 keyframe's first packet declares (RFC 6386 §9.1), if this is one.
pub fn vp8_keyframe_size(p: &[u8]) -> Option<(u16, u16)> {
    if !vp8_is_keyframe_start(p) {
        return None;
    }
    let b0 = *p.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    // Frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height.
    let h = p.get(i..i + 10)?;
    if h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([h[6], h[7]]) & 0x3fff;
    let ht = u16::from_le_bytes([h[8], h[9]]) & 0x3fff;
    Some((w, ht))
}

const H264_NAL_IDR: u8 = 5;
const H264_NAL_SPS: u8 = 7;
const H264_NAL_STAP_A: u8 = 24;
const H264_NAL_FU_A: u8 = 28;

/// H.264 (RFC 6184): an IDR slice or an SPS, alone, aggregated (STAP-A), or the first
/// fragment (FU-A) of one.
fn h264_is_keyframe_start(p: &[u8]) -> bool {
    let Some(&nal) = p.first() else { return false };
    let is_key = |t: u8| t == H264_NAL_IDR || t == H264_NAL_SPS;
    match nal & 0x1f {
        H264_NAL_STAP_A => {
            let mut rest = &p[1..];
            while rest.len() >= 3 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                if is_key(rest[2] & 0x1f) {
                    return true;
                }
                let Some(next) = rest.get(2 + size..) else {
                    return false;
                };
                rest = next;
            }
            false
        }
        H264_NAL_FU_A => p
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_are_found_behind_any_descriptor() {
        // S=1, PID=0, no extension, frame tag with P=0.
        assert!(Codec::Vp8.is_keyframe_start(&[0x10, 0x50, 0x01, 0x00]));
        // Same with P=1: an interframe.
        assert!(!Codec::Vp8.is_keyframe_start(&[0x10, 0x51]));
        // X=1, I=1 with a 15-bit picture id, then the tag.
        assert!(Codec::Vp8.is_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x50]));
        // Not the start of a partition.
        assert!(!Codec::Vp8.is_keyframe_start(&[0x00, 0x50]));
        // Truncated: no panic, no keyframe.
        assert!(!Codec::Vp8.is_keyframe_start(&[0x90, 0x80]));
        assert!(!Codec::Vp8.is_keyframe_start(&[]));
    }

    #[test]
    fn vp8_keyframes_say_their_size() {
        // Descriptor with a 15-bit picture id, frame tag, start code, 640x360.
        let p = [
            0x90, 0x80, 0x81, 0x23, 0x50, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
        ];
        assert_eq!(vp8_keyframe_size(&p), Some((640, 360)));
        assert_eq!(vp8_keyframe_size(&p[..10]), None);
        let mut wrong = p;
        wrong[8] = 0;
        assert_eq!(vp8_keyframe_size(&wrong), None);
    }

    #[test]
    fn h264_keyframes_in_every_packetization() {
        assert!(Codec::H264.is_keyframe_start(&[0x65, 0x88])); // IDR
        assert!(Codec::H264.is_keyframe_start(&[0x67, 0x42])); // SPS
        assert!(!Codec::H264.is_keyframe_start(&[0x41, 0x9a])); // non-IDR slice
        // STAP-A holding SPS.
        assert!(Codec::H264.is_keyframe_start(&[0x78, 0x00, 0x02, 0x67, 0x42]));
        // FU-A start of an IDR, and a middle fragment of one.
        assert!(Codec::H264.is_keyframe_start(&[0x7c, 0x85, 0x00]));
        assert!(!Codec::H264.is_keyframe_start(&[0x7c, 0x05, 0x00]));
        // A STAP-A whose length runs past the end.
        assert!(!Codec::H264.is_keyframe_start(&[0x78, 0xff, 0xff, 0x41]));
    }

    #[test]
    fn codecs_by_mime_type() {
        assert_eq!(Codec::from_mime_type("video/vp8"), Some(Codec::Vp8));
        assert_eq!(Codec::from_mime_type("audio/OPUS"), Some(Codec::Opus));
        assert_eq!(Codec::from_mime_type("video/AV1"), None);
    }
}
