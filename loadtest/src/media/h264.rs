//! Synthetic H.264 with the structure an SFU looks at (RFC 6184): keyframes are SPS + PPS
//! (aggregated in one STAP-A) followed by an IDR slice, other frames a non-IDR slice; large
//! slices are fragmented as FU-A. The slice contents are filler, so a decoder would reject
//! them: this exercises negotiation, forwarding and keyframe handling, not decoding.

const NAL_SLICE: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;
/// nal_ref_idc 3 (highest), as encoders mark parameter sets and reference slices.
const NRI: u8 = 0x60;

/// Constrained baseline 3.1, matching the profile-level-id the SFU negotiates (42e01f).
const SPS: &[u8] = &[
    NRI | NAL_SPS,
    0x42,
    0xe0,
    0x1f,
    0x8d,
    0x68,
    0x0a,
    0x03,
    0xda,
    0x10,
];
const PPS: &[u8] = &[NRI | NAL_PPS, 0xce, 0x3c, 0x80];

/// The NAL units of one frame whose slice carries `slice_bytes` of filler (its tail is the
/// sender's marker, written by the caller).
pub fn frame(keyframe: bool, slice_bytes: usize) -> Vec<Vec<u8>> {
    let mut slice = vec![0u8; slice_bytes.max(2)];
    slice[0] = NRI | if keyframe { NAL_IDR } else { NAL_SLICE };
    slice[1] = 0x88; // first_mb_in_slice = 0, then filler
    if keyframe {
        vec![SPS.to_vec(), PPS.to_vec(), slice]
    } else {
        vec![slice]
    }
}

/// RTP payloads for a frame's NAL units, each at most `mtu` bytes: small units aggregated
/// into one STAP-A, large ones fragmented into FU-As.
pub fn packetize(nalus: &[Vec<u8>], mtu: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stap: Vec<u8> = Vec::new();
    let flush = |stap: &mut Vec<u8>, out: &mut Vec<Vec<u8>>| {
        if !stap.is_empty() {
            out.push(std::mem::take(stap));
        }
    };
    for nalu in nalus {
        if nalu.len() + 3 <= mtu / 4 {
            if stap.is_empty() {
                stap.push(NRI | STAP_A);
            }
            if stap.len() + 2 + nalu.len() > mtu {
                flush(&mut stap, &mut out);
                stap.push(NRI | STAP_A);
            }
            stap.extend_from_slice(&(nalu.len() as u16).to_be_bytes());
            stap.extend_from_slice(nalu);
            continue;
        }
        flush(&mut stap, &mut out);
        if nalu.len() <= mtu {
            out.push(nalu.clone());
            continue;
        }
        let (header, body) = (nalu[0], &nalu[1..]);
        let chunks: Vec<&[u8]> = body.chunks(mtu - 2).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let start = if i == 0 { 0x80 } else { 0 };
            let end = if i + 1 == chunks.len() { 0x40 } else { 0 };
            let mut p = Vec::with_capacity(2 + chunk.len());
            p.push((header & 0xe0) | FU_A);
            p.push(start | end | (header & 0x1f));
            p.extend_from_slice(chunk);
            out.push(p);
        }
    }
    flush(&mut stap, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metaclinic_sfu::media::{Codec, KeyframeStart};

    #[test]
    fn keyframes_start_with_parameter_sets_and_are_recognised() {
        let key = packetize(&frame(true, 3000), 1100);
        assert_eq!(key[0][0] & 0x1f, STAP_A);
        assert!(Codec::H264.is_keyframe_start(&key[0]));
        assert!(
            key[1..]
                .iter()
                .all(|p| p[0] & 0x1f == FU_A && p.len() <= 1100)
        );
        assert_eq!(key[1][1] & 0x80, 0x80, "first fragment starts the IDR");
        assert_eq!(key.last().unwrap()[1] & 0x40, 0x40, "last fragment ends it");
        let delta = packetize(&frame(false, 3000), 1100);
        assert!(delta.iter().all(|p| !Codec::H264.is_keyframe_start(p)));
        let small = packetize(&frame(false, 500), 1100);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0][0] & 0x1f, NAL_SLICE);
    }

    #[test]
    fn fragments_reassemble_to_the_unit() {
        let nalus = frame(true, 5000);
        let packets = packetize(&nalus, 1000);
        let mut idr = vec![packets[1][0] & 0xe0 | (packets[1][1] & 0x1f)];
        for p in &packets[1..] {
            idr.extend_from_slice(&p[2..]);
        }
        assert_eq!(idr, nalus[2]);
    }
}
