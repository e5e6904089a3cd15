//! VP8 picture numbering across simulcast switches (RFC 7741 §4.2).
//!
//! Each simulcast layer is its own encoder with its own PictureID and TL0PICIDX sequences.
//! A decoder that sees a PictureID jump backwards after a layer switch takes the new frames
//! for old ones, so the subscriber's numbering is kept continuous: after a switch, the new
//! layer's numbers are shifted to follow the last ones forwarded.

use bytes::{Bytes, BytesMut};

/// Where a payload descriptor keeps its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    /// Offset of the PictureID and whether it is the 15-bit form.
    picture_id: Option<(usize, bool)>,
    tl0picidx: Option<usize>,
}

fn fields(p: &[u8]) -> Option<Fields> {
    let b0 = *p.first()?;
    let mut out = Fields {
        picture_id: None,
        tl0picidx: None,
    };
    if b0 & 0x80 == 0 {
        return Some(out);
    }
    let x = *p.get(1)?;
    let mut i = 2;
    if x & 0x80 != 0 {
        let m = *p.get(i)? & 0x80 != 0;
        if m {
            p.get(i + 1)?;
        }
        out.picture_id = Some((i, m));
        i += if m { 2 } else { 1 };
    }
    if x & 0x40 != 0 {
        p.get(i)?;
        out.tl0picidx = Some(i);
    }
    Some(out)
}

fn read_picture_id(p: &[u8], (at, long): (usize, bool)) -> u16 {
    if long {
        u16::from_be_bytes([p[at] & 0x7f, p[at + 1]])
    } else {
        u16::from(p[at] & 0x7f)
    }
}

/// The subscriber's VP8 numbering: offsets applied to the layer being forwarded.
#[derive(Debug, Clone, Default)]
pub struct Vp8Munger {
    picture_id_offset: u16,
    tl0_offset: u8,
    /// The last numbers sent, to continue from at a switch.
    last_picture_id: Option<u16>,
    last_tl0: Option<u8>,
}

impl Vp8Munger {
    /// A new layer starts with `payload` (its keyframe): shift its numbers to follow on.
    pub fn rebase(&mut self, payload: &[u8]) {
        let Some(f) = fields(payload) else { return };
        if let (Some(pid), Some(last)) = (f.picture_id, self.last_picture_id) {
            let incoming = read_picture_id(payload, pid);
            self.picture_id_offset = last.wrapping_add(1).wrapping_sub(incoming);
        }
        if let (Some(at), Some(last)) = (f.tl0picidx, self.last_tl0) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(payload[at]);
        }
    }

    /// The payload as the subscriber gets it: `None` when it goes unchanged (no offsets).
    pub fn rewrite(&mut self, payload: &Bytes) -> Option<Bytes> {
        let f = fields(payload)?;
        let mut out: Option<BytesMut> = None;
        if let Some(pid) = f.picture_id {
            let (at, long) = pid;
            let mask = if long { 0x7fff } else { 0x7f };
            let value = read_picture_id(payload, pid).wrapping_add(self.picture_id_offset) & mask;
            self.last_picture_id = Some(value);
            if self.picture_id_offset & mask != 0 {
                let buf = out.get_or_insert_with(|| BytesMut::from(&payload[..]));
                if long {
                    buf[at] = 0x80 | (value >> 8) as u8;
                    buf[at + 1] = value as u8;
                } else {
                    buf[at] = value as u8;
                }
            }
        }
        if let Some(at) = f.tl0picidx {
            let value = payload[at].wrapping_add(self.tl0_offset);
            self.last_tl0 = Some(value);
            if self.tl0_offset != 0 {
                out.get_or_insert_with(|| BytesMut::from(&payload[..]))[at] = value;
            }
        }
        out.map(BytesMut::freeze)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with a 15-bit PictureID and a TL0PICIDX, then a payload byte.
    fn descriptor(pid: u16, tl0: u8) -> Bytes {
        Bytes::from(vec![
            0x90,
            0xc0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x00,
        ])
    }

    fn numbers(p: &[u8]) -> (u16, u8) {
        let f = fields(p).unwrap();
        (
            read_picture_id(p, f.picture_id.unwrap()),
            p[f.tl0picidx.unwrap()],
        )
    }

    #[test]
    fn a_layer_switch_continues_the_numbering() {
        let mut m = Vp8Munger::default();
        // Layer A: forwarded as is.
        for pid in 100..103 {
            assert_eq!(m.rewrite(&descriptor(pid, 7)), None);
        }
        // Switch to layer B, whose own numbers are far away (and wrap).
        let first_b = descriptor(32_760, 250);
        m.rebase(&first_b);
        let out = m.rewrite(&first_b).expect("rewritten");
        assert_eq!(numbers(&out), (103, 8));
        let out = m.rewrite(&descriptor(32_767, 251)).unwrap();
        assert_eq!(numbers(&out), (110, 9));
        let out = m.rewrite(&descriptor(0, 252)).unwrap();
        assert_eq!(numbers(&out), (111, 10));
        // The payload after the descriptor is untouched.
        assert_eq!(out[5], 0x00);
    }

    #[test]
    fn short_picture_ids_and_bare_descriptors() {
        let mut m = Vp8Munger::default();
        let short = |pid: u8| Bytes::from(vec![0x90, 0x80, pid & 0x7f, 0x00]);
        assert_eq!(m.rewrite(&short(120)), None);
        m.rebase(&short(3));
        let out = m.rewrite(&short(3)).unwrap();
        assert_eq!(out[2], 121);
        // No extension byte: nothing to number.
        assert_eq!(m.rewrite(&Bytes::from_static(&[0x10, 0x00])), None);
        // Truncated descriptors are left alone, never a panic.
        for cut in 0..4 {
            let _ = m.rewrite(&descriptor(5, 5).slice(..cut));
            m.rebase(&descriptor(5, 5)[..cut]);
        }
    }
}
