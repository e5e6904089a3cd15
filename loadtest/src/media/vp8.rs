//! Synthetic VP8 video that real decoders accept (RFC 6386): every macroblock is intra
//! predicted (DC) with no residual, so a frame decodes to a flat picture, and it costs a few
//! bits per macroblock to describe. Frames are padded to a target size after the last
//! partition (decoders ignore what follows it), which gives realistic packet sizes and rates
//! and room for the sender's timestamp.
//!
//! Keyframes and interframes differ as in a real stream: interframes refer to the previous
//! frame's state, keyframes reset it; a decoder that starts on an interframe fails, as it
//! should.

use super::vp8_tables::{COEFF_UPDATE_PROBS, MV_UPDATE_PROBS};

/// The boolean entropy coder of RFC 6386 §7.
struct BoolEncoder {
    out: Vec<u8>,
    range: u32,
    bottom: u32,
    bit_count: i32,
}

impl BoolEncoder {
    fn new() -> Self {
        BoolEncoder {
            out: Vec::with_capacity(256),
            range: 255,
            bottom: 0,
            bit_count: 24,
        }
    }

    /// Propagate a carry into bytes already written.
    fn add_one_to_output(&mut self) {
        for b in self.out.iter_mut().rev() {
            if *b == 255 {
                *b = 0;
            } else {
                *b += 1;
                return;
            }
        }
    }

    fn put(&mut self, prob: u8, bit: bool) {
        let split = 1 + (((self.range - 1) * prob as u32) >> 8);
        if bit {
            self.bottom = self.bottom.wrapping_add(split);
            self.range -= split;
        } else {
            self.range = split;
        }
        while self.range < 128 {
            self.range <<= 1;
            if self.bottom & (1 << 31) != 0 {
                self.add_one_to_output();
            }
            self.bottom <<= 1;
            self.bit_count -= 1;
            if self.bit_count == 0 {
                self.out.push((self.bottom >> 24) as u8);
                self.bottom &= (1 << 24) - 1;
                self.bit_count = 8;
            }
        }
    }

    /// An unsigned literal, most significant bit first, each bit at even odds.
    fn literal(&mut self, value: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.put(128, (value >> i) & 1 == 1);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let mut c = self.bit_count;
        let mut v = self.bottom;
        if v & (1u32 << (32 - c)) != 0 {
            self.add_one_to_output();
        }
        v <<= (c & 7) as u32;
        c >>= 3;
        while c > 0 {
            v <<= 8;
            c -= 1;
        }
        for _ in 0..4 {
            self.out.push((v >> 24) as u8);
            v <<= 8;
        }
        self.out
    }
}

/// Probability of a macroblock *having* coefficients (we skip all of them).
const PROB_SKIP_FALSE: u8 = 1;
/// Probability that an interframe macroblock is intra coded: ours always are.
const PROB_INTRA: u8 = 255;

/// Writes synthetic VP8 frames of one size.
#[derive(Debug, Clone)]
pub struct Vp8Writer {
    width: u16,
    height: u16,
}

impl Vp8Writer {
    pub fn new(width: u16, height: u16) -> Self {
        assert!(
            width > 0 && height > 0 && width < 16384 && height < 16384,
            "VP8 sizes are 14-bit"
        );
        Vp8Writer { width, height }
    }

    fn macroblocks(&self) -> usize {
        (self.width as usize).div_ceil(16) * (self.height as usize).div_ceil(16)
    }

    /// One frame, padded with `padding` bytes after the partitions.
    pub fn frame(&self, keyframe: bool, padding: &[u8]) -> Vec<u8> {
        let mut e = BoolEncoder::new();
        if keyframe {
            e.literal(0, 1); // color space: YUV
            e.literal(0, 1); // clamping required
        }
        e.literal(0, 1); // no segmentation
        e.literal(0, 1); // normal loop filter
        e.literal(0, 6); // loop filter level 0: nothing to filter
        e.literal(0, 3); // sharpness
        e.literal(0, 1); // no loop filter adjustments
        e.literal(0, 2); // one token partition
        e.literal(40, 7); // y_ac_qi
        for _ in 0..5 {
            e.literal(0, 1); // no quantizer deltas
        }
        if keyframe {
            e.literal(0, 1); // refresh_entropy_probs: keep the defaults
        } else {
            e.literal(0, 1); // refresh_golden_frame
            e.literal(0, 1); // refresh_alternate_frame
            e.literal(0, 2); // copy_buffer_to_golden
            e.literal(0, 2); // copy_buffer_to_alternate
            e.literal(0, 1); // sign_bias_golden
            e.literal(0, 1); // sign_bias_alternate
            e.literal(0, 1); // refresh_entropy_probs
            e.literal(1, 1); // refresh_last
        }
        for &p in COEFF_UPDATE_PROBS.iter() {
            e.put(p, false); // no token probability updates
        }
        e.literal(1, 1); // mb_no_skip_coeff: skip flags present
        e.literal(PROB_SKIP_FALSE as u32, 8);
        if !keyframe {
            e.literal(PROB_INTRA as u32, 8);
            e.literal(128, 8); // prob_last
            e.literal(128, 8); // prob_gf
            e.literal(0, 1); // no intra 16x16 mode probability update
            e.literal(0, 1); // no chroma mode probability update
            for component in MV_UPDATE_PROBS.iter() {
                for &p in component {
                    e.put(p, false); // no motion vector probability updates
                }
            }
        }
        for _ in 0..self.macroblocks() {
            e.put(PROB_SKIP_FALSE, true); // no residual
            if keyframe {
                // kf_ymode_tree with kf_ymode_prob {145, 156, 163, 128}: DC_PRED is 1,0,0.
                e.put(145, true);
                e.put(156, false);
                e.put(163, false);
                // uv_mode_tree with kf_uv_mode_prob {142, 114, 183}: DC_PRED is 0.
                e.put(142, false);
            } else {
                e.put(PROB_INTRA, false); // intra macroblock
                // ymode_tree with ymode_prob {112, 86, 140, 37}: DC_PRED is 0.
                e.put(112, false);
                // uv_mode_tree with uv_mode_prob {162, 101, 204}: DC_PRED is 0.
                e.put(162, false);
            }
        }
        let first_partition = e.finish();

        let mut out = Vec::with_capacity(10 + first_partition.len() + padding.len() + 1);
        let size = first_partition.len() as u32;
        // Frame tag: inverse keyframe flag, version 0, show_frame, first partition size.
        let tag = u32::from(!keyframe) | (1 << 4) | (size << 5);
        out.extend_from_slice(&tag.to_le_bytes()[..3]);
        if keyframe {
            out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            out.extend_from_slice(&self.width.to_le_bytes());
            out.extend_from_slice(&self.height.to_le_bytes());
        }
        out.extend_from_slice(&first_partition);
        // The token partition: never read (every macroblock skips), but must not be empty.
        out.push(0);
        out.extend_from_slice(padding);
        out
    }
}

/// Split a frame into RTP payloads of at most `mtu` bytes, each with a VP8 payload
/// descriptor carrying a 15-bit picture id (RFC 7741 §4.2), as browsers send them.
pub fn packetize(frame: &[u8], picture_id: u16, mtu: usize) -> Vec<Vec<u8>> {
    const DESCRIPTOR: usize = 4;
    let room = mtu.saturating_sub(DESCRIPTOR).max(1);
    frame
        .chunks(room)
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = Vec::with_capacity(DESCRIPTOR + chunk.len());
            let start = if i == 0 { 0x10 } else { 0x00 };
            p.push(0x80 | start); // X=1, S on the first packet, partition 0
            p.push(0x80); // I=1: picture id present
            p.push(0x80 | ((picture_id >> 8) as u8 & 0x7f)); // M=1: 15-bit picture id
            p.push(picture_id as u8);
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use metaclinic_sfu::media::{Codec, KeyframeStart};

    #[test]
    fn keyframes_carry_their_size_and_start_code() {
        let f = Vp8Writer::new(320, 240).frame(true, &[]);
        assert_eq!(f[0] & 1, 0, "keyframe flag");
        assert_eq!(&f[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([f[6], f[7]]), 320);
        assert_eq!(u16::from_le_bytes([f[8], f[9]]), 240);
        let size = (u32::from_le_bytes([f[0], f[1], f[2], 0]) >> 5) as usize;
        assert_eq!(f.len(), 10 + size + 1);
        let inter = Vp8Writer::new(320, 240).frame(false, &[1, 2, 3]);
        assert_eq!(inter[0] & 1, 1);
        assert!(inter.ends_with(&[1, 2, 3]));
    }

    #[test]
    fn packets_are_seen_as_keyframes_by_the_sfu() {
        let w = Vp8Writer::new(640, 480);
        let key = packetize(&w.frame(true, &[0; 3000]), 300, 1200);
        assert!(key.len() >= 3);
        assert!(Codec::Vp8.is_keyframe_start(&key[0]));
        assert!(!Codec::Vp8.is_keyframe_start(&key[1]));
        assert!(key.iter().all(|p| p.len() <= 1200));
        let inter = packetize(&w.frame(false, &[]), 301, 1200);
        assert!(!Codec::Vp8.is_keyframe_start(&inter[0]));
    }

    /// A reference decoder reading our boolean coder's output back (RFC 6386 §7.3).
    struct BoolDecoder<'a> {
        data: &'a [u8],
        pos: usize,
        value: u32,
        range: u32,
        bit_count: i32,
    }

    impl<'a> BoolDecoder<'a> {
        fn new(data: &'a [u8]) -> Self {
            let mut d = BoolDecoder {
                data,
                pos: 0,
                value: 0,
                range: 255,
                bit_count: 0,
            };
            d.value = (d.byte() << 8) | d.byte();
            d
        }
        fn byte(&mut self) -> u32 {
            let b = self.data.get(self.pos).copied().unwrap_or(0) as u32;
            self.pos += 1;
            b
        }
        fn get(&mut self, prob: u8) -> bool {
            let split = 1 + (((self.range - 1) * prob as u32) >> 8);
            let big_split = split << 8;
            let bit = if self.value >= big_split {
                self.range -= split;
                self.value -= big_split;
                true
            } else {
                self.range = split;
                false
            };
            while self.range < 128 {
                self.value <<= 1;
                self.range <<= 1;
                self.bit_count += 1;
                if self.bit_count == 8 {
                    self.bit_count = 0;
                    self.value |= self.byte();
                }
            }
            bit
        }
    }

    #[test]
    fn the_bool_coder_round_trips() {
        let mut rng = 12345u32;
        let mut bits = Vec::new();
        let mut e = BoolEncoder::new();
        for _ in 0..5000 {
            rng = rng.wrapping_mul(1103515245).wrapping_add(12345);
            let prob = (rng >> 8) as u8 | 1;
            let bit = (rng >> 20).is_multiple_of(3);
            e.put(prob, bit);
            bits.push((prob, bit));
        }
        let out = e.finish();
        let mut d = BoolDecoder::new(&out);
        for (i, (prob, bit)) in bits.into_iter().enumerate() {
            assert_eq!(d.get(prob), bit, "bit {i}");
        }
    }
}

/// Our keyframes decode with an independent VP8 decoder (the lossy WebP one).
#[cfg(test)]
mod decode_tests {
    use super::*;

    fn webp(frame: &[u8]) -> Vec<u8> {
        let mut chunk = frame.to_vec();
        let chunk_len = chunk.len() as u32;
        if chunk.len() % 2 == 1 {
            chunk.push(0);
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(4 + 8 + chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WEBPVP8 ");
        out.extend_from_slice(&chunk_len.to_le_bytes());
        out.extend_from_slice(&chunk);
        out
    }

    #[test]
    fn keyframes_decode_to_a_flat_picture() {
        for (w, h) in [(320u16, 240u16), (176, 144), (33, 17)] {
            let frame = Vp8Writer::new(w, h).frame(true, &[0xab; 500]);
            let mut dec = image_webp::WebPDecoder::new(std::io::Cursor::new(webp(&frame)))
                .expect("a valid VP8 keyframe");
            assert_eq!(dec.dimensions(), (w as u32, h as u32));
            let mut rgb = vec![0u8; dec.output_buffer_size().unwrap()];
            dec.read_image(&mut rgb).expect("decodes");
            let first = &rgb[..3];
            assert!(rgb.chunks(3).all(|px| px == first), "a flat picture");
        }
    }
}
