//! Forwarding decisions for one subscription ("down track"): given a publisher's packet, drop
//! it (with a reason) or rewrite it into the subscriber's own SSRC, sequence number and
//! timestamp space. Pure logic: the shard applies the decision.
//!
//! The subscriber never sees the publisher's numbering. Its stream starts at a random
//! sequence number and timestamp, stays gap-free when the SFU drops a packet on purpose
//! (padding, packets before the first keyframe), and so survives later layer switches and
//! pauses without looking like loss.

mod seq;
mod vp8;

use std::time::Instant;

use bytes::Bytes;

pub use seq::SeqMapper;
pub use vp8::Vp8Munger;

use crate::media::{Codec, KeyframeStart, MediaKind, RtpPacket};
use crate::metrics::DropReason;

/// `a` comes after `b` in RTP sequence order (RFC 3550 wrap-around).
pub fn seq_is_newer(a: u16, b: u16) -> bool {
    a != b && (a.wrapping_sub(b) as i16) > 0
}

/// Where a subscription stands in its stream.
#[derive(Debug, Clone)]
enum Phase {
    /// Nothing forwarded yet; video waits for a keyframe so the decoder starts clean.
    WaitingForStart,
    /// Forwarding the publisher's simulcast layer `layer` (0 without simulcast).
    Forwarding {
        layer: u8,
        seq: SeqMapper,
        ts_offset: u32,
    },
    /// Paused to save bandwidth; resumes on a keyframe, continuing the numbering.
    Paused,
}

/// What to do with one packet for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    Drop(DropReason),
    /// A simulcast layer this subscriber does not get: not a drop, just not theirs.
    Skip,
    /// Send with these header values, and this payload if rewritten (VP8 picture numbering
    /// after a layer switch), else the publisher's.
    Send {
        sequence_number: u16,
        timestamp: u32,
        payload: Option<Bytes>,
    },
}

/// The last packet sent, which a switch or a resume continues from.
#[derive(Debug, Clone, Copy)]
struct LastSent {
    seq: u16,
    ts: u32,
    at: Instant,
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
    /// The layer this subscriber should get; `None`: paused (its bandwidth cannot carry it).
    target: Option<u8>,
    last_sent: Option<LastSent>,
    vp8: Vp8Munger,
    /// Layer switches made (a start or a resume is not a switch).
    pub switches: u64,
}

impl DownTrack {
    pub fn new(codec: Codec, ssrc: u32, start_seq: u16, start_ts: u32) -> Self {
        Self {
            codec,
            ssrc,
            start_seq,
            start_ts,
            phase: Phase::WaitingForStart,
            target: Some(0),
            last_sent: None,
            vp8: Vp8Munger::default(),
            switches: 0,
        }
    }

    /// Has a video subscription started (received its first keyframe)?
    pub fn is_waiting_for_keyframe(&self) -> bool {
        self.codec.kind() == MediaKind::Video
            && self.target.is_some()
            && !matches!(self.phase, Phase::Forwarding { layer, .. } if Some(layer) == self.target)
    }

    /// The layer being forwarded, if any.
    pub fn current_layer(&self) -> Option<u8> {
        match self.phase {
            Phase::Forwarding { layer, .. } => Some(layer),
            _ => None,
        }
    }

    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// Choose the layer to forward (`None`: pause). Returns true when the new layer needs a
    /// keyframe before it can start; until it comes, the old layer goes on.
    pub fn set_target(&mut self, target: Option<u8>) -> bool {
        if self.target == target {
            return false;
        }
        self.target = target;
        target.is_some() && self.codec.kind() == MediaKind::Video
    }

    /// Like [`Self::set_target`], but the old layer stops at once: on a congested line every
    /// packet more of it queues in front of the audio. The picture holds still until the new
    /// layer's keyframe.
    pub fn set_target_now(&mut self, target: Option<u8>) -> bool {
        let needs_keyframe = self.set_target(target);
        if needs_keyframe && matches!(self.phase, Phase::Forwarding { .. }) {
            self.phase = Phase::Paused;
        }
        needs_keyframe
    }

    /// The SFU withholds this stream for a while (the publisher is muted, the subscriber
    /// cannot take packets): what comes after continues the subscriber's numbering from the
    /// last packet sent, so the break never shows as loss nobody can repair. Video resumes on
    /// a keyframe, as after a layer switch; audio with the next packet. Returns true when
    /// the resume needs a keyframe.
    pub fn interrupt(&mut self) -> bool {
        if !matches!(self.phase, Phase::Forwarding { .. }) {
            return false;
        }
        self.phase = Phase::Paused;
        self.codec.kind() == MediaKind::Video
    }

    pub fn decide(&mut self, pkt: &RtpPacket, layer: u8, now: Instant) -> Forward {
        let current = self.current_layer();
        if pkt.is_padding_only() {
            if let Phase::Forwarding { layer: l, seq, .. } = &mut self.phase
                && *l == layer
            {
                seq.skip(pkt.sequence_number);
                return Forward::Drop(DropReason::Padding);
            }
            return Forward::Skip;
        }
        let is_video = self.codec.kind() == MediaKind::Video;
        let Some(target) = self.target else {
            // Paused: the layer that was forwarded counts as dropped, the others skip.
            if current.is_some() {
                self.phase = Phase::Paused;
            }
            return if current.is_none_or(|c| c == layer) {
                Forward::Drop(DropReason::Paused)
            } else {
                Forward::Skip
            };
        };
        if layer == target && current != Some(target) {
            if is_video && !self.codec.is_keyframe_start(&pkt.payload) {
                // Keep forwarding the old layer (if any) until the new one's keyframe.
                return match current {
                    Some(_) => Forward::Skip,
                    None => Forward::Drop(DropReason::WaitingForKeyframe),
                };
            }
            return self.start(pkt, layer, now, current.is_some());
        }
        let Phase::Forwarding { seq, ts_offset, .. } = &mut self.phase else {
            return Forward::Skip;
        };
        if current != Some(layer) {
            return Forward::Skip;
        }
        let Some(sequence_number) = seq.map(pkt.sequence_number) else {
            return Forward::Drop(DropReason::TooOld);
        };
        let timestamp = pkt.timestamp.wrapping_add(*ts_offset);
        let payload = match self.codec {
            Codec::Vp8 => self.vp8.rewrite(&pkt.payload),
            _ => None,
        };
        self.sent(sequence_number, timestamp, now);
        Forward::Send {
            sequence_number,
            timestamp,
            payload,
        }
    }

    /// Start forwarding `layer` from this packet (a keyframe for video): the first start, a
    /// resume after a pause, or a switch from another layer. The subscriber's numbering goes
    /// on from the last packet sent; its timestamps advance by the time that passed.
    fn start(&mut self, pkt: &RtpPacket, layer: u8, now: Instant, switching: bool) -> Forward {
        let (seq_out, ts_out) = match self.last_sent {
            None => (self.start_seq, self.start_ts),
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                let ticks = (elapsed.as_micros() as u64 * u64::from(self.codec.clock_rate())
                    / 1_000_000)
                    .max(1);
                (last.seq.wrapping_add(1), last.ts.wrapping_add(ticks as u32))
            }
        };
        self.phase = Phase::Forwarding {
            layer,
            seq: SeqMapper::new(pkt.sequence_number, seq_out),
            ts_offset: ts_out.wrapping_sub(pkt.timestamp),
        };
        if switching {
            self.switches += 1;
        }
        let payload = match self.codec {
            Codec::Vp8 => {
                self.vp8.rebase(&pkt.payload);
                self.vp8.rewrite(&pkt.payload)
            }
            _ => None,
        };
        self.sent(seq_out, ts_out, now);
        Forward::Send {
            sequence_number: seq_out,
            timestamp: ts_out,
            payload,
        }
    }

    fn sent(&mut self, seq: u16, ts: u32, now: Instant) {
        if self.last_sent.is_none_or(|l| seq_is_newer(seq, l.seq)) {
            self.last_sent = Some(LastSent { seq, ts, at: now });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn send(sequence_number: u16, timestamp: u32) -> Forward {
        Forward::Send {
            sequence_number,
            timestamp,
            payload: None,
        }
    }

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
            dt.decide(&pkt(10, 90, DELTA), 0, Instant::now()),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(
            dt.decide(&pkt(11, 90, CONT), 0, Instant::now()),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(
            dt.decide(&pkt(12, 180, KEY), 0, Instant::now()),
            send(1000, 5000)
        );
        assert_eq!(
            dt.decide(&pkt(13, 180, CONT), 0, Instant::now()),
            send(1001, 5000)
        );
        assert_eq!(
            dt.decide(&pkt(14, 270, DELTA), 0, Instant::now()),
            send(1002, 5090)
        );
        // A retransmitted packet from before the start cannot be placed.
        assert_eq!(
            dt.decide(&pkt(11, 90, CONT), 0, Instant::now()),
            Forward::Drop(DropReason::TooOld)
        );
    }

    #[test]
    fn audio_starts_at_once() {
        let mut dt = DownTrack::new(Codec::Opus, 7, 65535, u32::MAX);
        assert_eq!(
            dt.decide(&pkt(500, 960, b"x"), 0, Instant::now()),
            send(65535, u32::MAX)
        );
        assert_eq!(
            dt.decide(&pkt(501, 1920, b"x"), 0, Instant::now()),
            send(0, 959)
        );
    }

    #[test]
    fn dropped_padding_leaves_no_gap_and_late_packets_keep_their_place() {
        let mut dt = DownTrack::new(Codec::Vp8, 1, 0, 0);
        assert!(matches!(
            dt.decide(&pkt(100, 0, KEY), 0, Instant::now()),
            Forward::Send {
                sequence_number: 0,
                ..
            }
        ));
        // 101 is lost upstream for now; 102 is padding.
        assert_eq!(
            dt.decide(&pkt(102, 0, b""), 0, Instant::now()),
            Forward::Drop(DropReason::Padding)
        );
        assert_eq!(dt.decide(&pkt(103, 0, CONT), 0, Instant::now()), send(2, 0));
        // 101 arrives late (a retransmission): it takes the slot before the padding.
        assert_eq!(dt.decide(&pkt(101, 0, CONT), 0, Instant::now()), send(1, 0));
        assert_eq!(dt.decide(&pkt(104, 0, CONT), 0, Instant::now()), send(3, 0));
    }

    /// A VP8 packet with a 15-bit PictureID: keyframe start, or a continuation.
    fn vp8(seq: u16, ts: u32, pid: u16, key: bool) -> RtpPacket {
        let first = if key { 0x00 } else { 0x01 };
        RtpPacket {
            payload: Bytes::from(vec![0x90, 0x80, 0x80 | (pid >> 8) as u8, pid as u8, first]),
            ..pkt(seq, ts, &[])
        }
    }

    fn sent(f: &Forward) -> (u16, u32) {
        match f {
            Forward::Send {
                sequence_number,
                timestamp,
                ..
            } => (*sequence_number, *timestamp),
            other => panic!("not sent: {other:?}"),
        }
    }

    #[test]
    fn a_layer_switch_waits_for_a_keyframe_and_stays_continuous() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(Codec::Vp8, 9, 1000, 50_000);
        dt.set_target(Some(2));
        // Layer 0 is not this subscriber's; layer 2 starts on its keyframe.
        assert_eq!(dt.decide(&vp8(500, 9000, 40, true), 0, t0), Forward::Skip);
        assert_eq!(
            sent(&dt.decide(&vp8(70, 3000, 9000, true), 2, t0)),
            (1000, 50_000)
        );
        assert_eq!(
            sent(&dt.decide(
                &vp8(71, 6000, 9001, false),
                2,
                t0 + Duration::from_millis(33)
            )),
            (1001, 53_000)
        );
        // Down to layer 0: the subscriber keeps layer 2 until layer 0's keyframe.
        assert!(dt.set_target(Some(0)), "a switch needs a keyframe");
        assert!(dt.is_waiting_for_keyframe());
        assert_eq!(
            dt.decide(&vp8(501, 12_000, 41, false), 0, t0),
            Forward::Skip
        );
        assert_eq!(
            sent(&dt.decide(
                &vp8(72, 9000, 9002, false),
                2,
                t0 + Duration::from_millis(66)
            )),
            (1002, 56_000)
        );
        // Layer 0's keyframe, 100 ms after the last packet sent: numbering goes on, the
        // timestamp advances by the time that passed (9000 ticks at 90 kHz).
        let f = dt.decide(
            &vp8(502, 15_000, 42, true),
            0,
            t0 + Duration::from_millis(166),
        );
        assert_eq!(sent(&f), (1003, 65_000));
        // And its PictureID follows the last one forwarded (9002).
        let Forward::Send {
            payload: Some(p), ..
        } = f
        else {
            panic!("the picture id must be rewritten: {f:?}")
        };
        assert_eq!(u16::from_be_bytes([p[2] & 0x7f, p[3]]), 9003);
        assert_eq!(dt.switches, 1);
        // Late packets of the old layer are not this subscriber's any more.
        assert_eq!(
            dt.decide(&vp8(73, 12_000, 9003, false), 2, t0),
            Forward::Skip
        );
        assert_eq!(
            sent(&dt.decide(
                &vp8(503, 18_000, 43, false),
                0,
                t0 + Duration::from_millis(200)
            )),
            (1004, 68_000)
        );
    }

    #[test]
    fn an_urgent_step_down_stops_the_old_layer_at_once() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(Codec::Vp8, 9, 0, 0);
        dt.set_target(Some(2));
        assert_eq!(sent(&dt.decide(&vp8(1, 0, 1, true), 2, t0)), (0, 0));
        assert!(dt.set_target_now(Some(0)));
        assert_eq!(dt.decide(&vp8(2, 3000, 2, false), 2, t0), Forward::Skip);
        assert_eq!(
            dt.decide(&vp8(50, 3000, 7, false), 0, t0),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        let f = dt.decide(&vp8(51, 6000, 8, true), 0, t0 + Duration::from_millis(66));
        assert_eq!(sent(&f), (1, 5940));
    }

    #[test]
    fn a_paused_subscription_resumes_on_a_keyframe_without_a_gap() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(Codec::Vp8, 9, 10, 0);
        sent(&dt.decide(&vp8(1, 0, 1, true), 0, t0));
        sent(&dt.decide(&vp8(2, 3000, 2, false), 0, t0));
        assert!(!dt.set_target(None), "pausing needs nothing");
        assert_eq!(
            dt.decide(&vp8(3, 6000, 3, false), 0, t0),
            Forward::Drop(DropReason::Paused)
        );
        assert!(
            !dt.is_waiting_for_keyframe(),
            "a paused track asks for nothing"
        );
        assert!(dt.set_target(Some(0)));
        assert_eq!(
            dt.decide(&vp8(4, 9000, 4, false), 0, t0),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        let resumed = dt.decide(&vp8(5, 12_000, 5, true), 0, t0 + Duration::from_secs(1));
        assert_eq!(sent(&resumed), (12, 93_000));
        assert_eq!(dt.switches, 0, "a resume is not a switch");
    }

    #[test]
    fn an_interrupted_video_resumes_on_a_keyframe_without_a_gap() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(Codec::Vp8, 9, 100, 0);
        assert!(!dt.interrupt(), "nothing forwarded yet: nothing to resume");
        sent(&dt.decide(&vp8(1, 0, 1, true), 0, t0));
        sent(&dt.decide(&vp8(2, 3000, 2, false), 0, t0));
        // Packets 3 and 4 are withheld (say, the publisher is muted).
        assert!(dt.interrupt(), "video resumes on a keyframe");
        assert!(dt.is_waiting_for_keyframe());
        assert_eq!(
            dt.decide(&vp8(5, 15_000, 5, false), 0, t0),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        let f = dt.decide(&vp8(6, 18_000, 6, true), 0, t0 + Duration::from_millis(100));
        assert_eq!(
            sent(&f).0,
            102,
            "the numbering goes on from the last packet sent"
        );
        assert_eq!(dt.switches, 0);
    }

    #[test]
    fn an_interrupted_audio_stream_goes_on_with_the_next_packet() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(Codec::Opus, 7, 10, 0);
        assert_eq!(dt.decide(&pkt(500, 960, b"x"), 0, t0), send(10, 0));
        assert!(!dt.interrupt(), "audio needs no keyframe");
        // 501..=549 withheld; 550 comes a second later and follows 10 directly.
        let f = dt.decide(&pkt(550, 48_960, b"x"), 0, t0 + Duration::from_secs(1));
        assert_eq!(sent(&f), (11, 48_000));
        assert_eq!(dt.decide(&pkt(551, 49_920, b"x"), 0, t0), send(12, 48_960));
    }

    #[test]
    fn padding_on_other_layers_is_skipped_not_counted() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(Codec::Vp8, 9, 0, 0);
        dt.set_target(Some(1));
        sent(&dt.decide(&vp8(1, 0, 1, true), 1, t0));
        assert_eq!(dt.decide(&pkt(7, 0, b""), 0, t0), Forward::Skip);
        assert_eq!(
            dt.decide(&pkt(2, 0, b""), 1, t0),
            Forward::Drop(DropReason::Padding)
        );
    }
}
