//! Forwarding decisions for one subscription ("down track"): given a publisher's packet, drop
//! it (with a reason) or rewrite it into the subscriber's own SSRC, sequence number and
//! timestamp space. Pure logic: the shard applies the decision.
//!
//! The subscriber never sees the publisher's numbering. Its stream starts at a random
//! sequence number and timestamp, stays gap-free when the SFU drops a packet on purpose
//! (padding, packets before the first keyframe), and so survives later layer switches and
//! pauses without looking like loss.

use std::collections::VecDeque;

use crate::media::{Codec, RtpPacket};
use crate::metrics::DropReason;

/// `a` comes after `b` in RTP sequence order (RFC 3550 wrap-around).
pub fn seq_is_newer(a: u16, b: u16) -> bool {
    a != b && (a.wrapping_sub(b) as i16) > 0
}

/// How many deliberate drops are remembered to map late packets correctly. Older drops fold
/// into the base offset, and packets older than the oldest remembered drop are refused.
const REMEMBERED_DROPS: usize = 64;

/// Maps a publisher's sequence numbers to a subscriber's gap-free ones.
#[derive(Debug, Clone)]
pub struct SeqMapper {
    /// Added to an input sequence number that follows every remembered drop.
    offset: u16,
    /// The first input forwarded; anything older is from before the subscription started.
    first_in: u16,
    highest_in: u16,
    /// Inputs dropped on purpose, oldest first.
    dropped: VecDeque<u16>,
}

impl SeqMapper {
    pub fn new(first_in: u16, first_out: u16) -> Self {
        Self {
            offset: first_out.wrapping_sub(first_in),
            first_in,
            highest_in: first_in,
            dropped: VecDeque::new(),
        }
    }

    /// Record that `seq` will not be forwarded; later packets move down by one.
    pub fn skip(&mut self, seq: u16) {
        if !seq_is_newer(seq, self.first_in) || self.dropped.contains(&seq) {
            return;
        }
        if seq_is_newer(seq, self.highest_in) {
            self.highest_in = seq;
        }
        let at = self
            .dropped
            .iter()
            .position(|&d| seq_is_newer(d, seq))
            .unwrap_or(self.dropped.len());
        self.dropped.insert(at, seq);
        if self.dropped.len() > REMEMBERED_DROPS {
            // Fold the oldest drop into the base: from now on it is too old to matter, and
            // `map` refuses anything older than the oldest drop still remembered.
            self.dropped.pop_front();
            self.offset = self.offset.wrapping_sub(1);
            if let Some(&oldest) = self.dropped.front() {
                self.first_in = oldest;
            }
        }
    }

    /// The subscriber's sequence number for input `seq`, or `None` when it is older than
    /// what this mapping can place.
    pub fn map(&mut self, seq: u16) -> Option<u16> {
        if seq != self.first_in && !seq_is_newer(seq, self.first_in) {
            return None;
        }
        if self.dropped.contains(&seq) {
            return None;
        }
        if seq_is_newer(seq, self.highest_in) {
            self.highest_in = seq;
        }
        let later_drops = self
            .dropped
            .iter()
            .rev()
            .take_while(|&&d| seq_is_newer(d, seq))
            .count();
        Some(
            seq.wrapping_add(self.offset)
                .wrapping_sub((self.dropped.len() - later_drops) as u16),
        )
    }
}

/// Where a subscription stands in its stream.
#[derive(Debug, Clone)]
enum Phase {
    /// Nothing forwarded yet; video waits for a keyframe so the decoder starts clean.
    WaitingForStart,
    Forwarding {
        seq: SeqMapper,
        ts_offset: u32,
    },
}

/// What to do with one packet for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    Drop(DropReason),
    /// Send with these header values (and the publisher's payload).
    Send {
        sequence_number: u16,
        timestamp: u32,
    },
}

/// The rewriting state of one subscription.
#[derive(Debug, Clone)]
pub struct DownTrack {
    pub codec: Codec,
    /// The subscriber's SSRC for this stream (chosen by the SFU).
    pub ssrc: u32,
    /// Random starting points, so no two subscribers share numbering.
    start_seq: u16,
    start_ts: u32,
    phase: Phase,
}

impl DownTrack {
    pub fn new(codec: Codec, ssrc: u32, start_seq: u16, start_ts: u32) -> Self {
        Self {
            codec,
            ssrc,
            start_seq,
            start_ts,
            phase: Phase::WaitingForStart,
        }
    }

    /// Has a video subscription started (received its first keyframe)?
    pub fn is_waiting_for_keyframe(&self) -> bool {
        matches!(self.phase, Phase::WaitingForStart)
            && self.codec.kind() == crate::media::MediaKind::Video
    }

    pub fn decide(&mut self, pkt: &RtpPacket) -> Forward {
        match &mut self.phase {
            Phase::WaitingForStart => {
                if pkt.is_padding_only() {
                    return Forward::Drop(DropReason::Padding);
                }
                let is_video = self.codec.kind() == crate::media::MediaKind::Video;
                if is_video && !self.codec.is_keyframe_start(&pkt.payload) {
                    return Forward::Drop(DropReason::WaitingForKeyframe);
                }
                let ts_offset = self.start_ts.wrapping_sub(pkt.timestamp);
                self.phase = Phase::Forwarding {
                    seq: SeqMapper::new(pkt.sequence_number, self.start_seq),
                    ts_offset,
                };
                Forward::Send {
                    sequence_number: self.start_seq,
                    timestamp: self.start_ts,
                }
            }
            Phase::Forwarding { seq, ts_offset } => {
                if pkt.is_padding_only() {
                    seq.skip(pkt.sequence_number);
                    return Forward::Drop(DropReason::Padding);
                }
                match seq.map(pkt.sequence_number) {
                    Some(sequence_number) => Forward::Send {
                        sequence_number,
                        timestamp: pkt.timestamp.wrapping_add(*ts_offset),
                    },
                    None => Forward::Drop(DropReason::TooOld),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(seq: u16, ts: u32, payload: &'static [u8]) -> RtpPacket {
        RtpPacket {
            ssrc: 1,
            sequence_number: seq,
            timestamp: ts,
            payload_type: 96,
            marker: false,
            payload: Bytes::from_static(payload),
            audio_level: None,
        }
    }

    const KEY: &[u8] = &[0x10, 0x50];
    const DELTA: &[u8] = &[0x10, 0x51];
    const CONT: &[u8] = &[0x00, 0x00];

    #[test]
    fn sequence_order_wraps() {
        assert!(seq_is_newer(1, 0));
        assert!(seq_is_newer(0, 65535));
        assert!(!seq_is_newer(65535, 0));
        assert!(!seq_is_newer(7, 7));
    }

    #[test]
    fn video_starts_on_a_keyframe_with_its_own_numbering() {
        let mut dt = DownTrack::new(Codec::Vp8, 99, 1000, 5000);
        assert_eq!(
            dt.decide(&pkt(10, 90, DELTA)),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(
            dt.decide(&pkt(11, 90, CONT)),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(
            dt.decide(&pkt(12, 180, KEY)),
            Forward::Send {
                sequence_number: 1000,
                timestamp: 5000
            }
        );
        assert_eq!(
            dt.decide(&pkt(13, 180, CONT)),
            Forward::Send {
                sequence_number: 1001,
                timestamp: 5000
            }
        );
        assert_eq!(
            dt.decide(&pkt(14, 270, DELTA)),
            Forward::Send {
                sequence_number: 1002,
                timestamp: 5090
            }
        );
        // A retransmitted packet from before the start cannot be placed.
        assert_eq!(
            dt.decide(&pkt(11, 90, CONT)),
            Forward::Drop(DropReason::TooOld)
        );
    }

    #[test]
    fn audio_starts_at_once() {
        let mut dt = DownTrack::new(Codec::Opus, 7, 65535, u32::MAX);
        assert_eq!(
            dt.decide(&pkt(500, 960, b"x")),
            Forward::Send {
                sequence_number: 65535,
                timestamp: u32::MAX
            }
        );
        assert_eq!(
            dt.decide(&pkt(501, 1920, b"x")),
            Forward::Send {
                sequence_number: 0,
                timestamp: 959
            }
        );
    }

    #[test]
    fn dropped_padding_leaves_no_gap_and_late_packets_keep_their_place() {
        let mut dt = DownTrack::new(Codec::Vp8, 1, 0, 0);
        assert!(matches!(
            dt.decide(&pkt(100, 0, KEY)),
            Forward::Send {
                sequence_number: 0,
                ..
            }
        ));
        // 101 is lost upstream for now; 102 is padding.
        assert_eq!(
            dt.decide(&pkt(102, 0, b"")),
            Forward::Drop(DropReason::Padding)
        );
        assert_eq!(
            dt.decide(&pkt(103, 0, CONT)),
            Forward::Send {
                sequence_number: 2,
                timestamp: 0
            }
        );
        // 101 arrives late (a retransmission): it takes the slot before the padding.
        assert_eq!(
            dt.decide(&pkt(101, 0, CONT)),
            Forward::Send {
                sequence_number: 1,
                timestamp: 0
            }
        );
        assert_eq!(
            dt.decide(&pkt(104, 0, CONT)),
            Forward::Send {
                sequence_number: 3,
                timestamp: 0
            }
        );
    }

    #[test]
    fn many_drops_fold_into_the_base() {
        let mut m = SeqMapper::new(0, 0);
        for s in 1..=200u16 {
            if s % 2 == 0 {
                m.skip(s);
            } else {
                assert_eq!(m.map(s), Some(s / 2 + 1), "input {s}");
            }
        }
        // Across the 16-bit wrap as well.
        let mut m = SeqMapper::new(65530, 10);
        m.skip(65534);
        assert_eq!(m.map(65535), Some(14));
        assert_eq!(m.map(0), Some(15));
        assert_eq!(m.map(65533), Some(13));
    }
}
