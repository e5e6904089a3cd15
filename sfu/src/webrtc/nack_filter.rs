//! rtc's NACK responder resends every packet a NACK names, as often as it is named. This
//! interceptor sits wire-ward of it and hands on only what the [`NackPolicy`] allows; a NACK
//! that cannot be answered reaches the application as a keyframe request (PLI). Used where
//! rtc sends our RTP (the client library); the SFU's fast path applies the policy itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::sansio::Protocol;

use super::feedback::ChainShared;
use super::nack_policy::NackPolicy;

/// Its place in the chain: wire-ward of the NACK responder (4 000), above the pacer slot.
pub(super) const SLOT: usize = 3_500;

pub(super) struct NackFilter {
    policy: NackPolicy,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl NackFilter {
    pub fn new(shared: Arc<ChainShared>) -> Self {
        NackFilter {
            policy: NackPolicy::new(shared),
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for NackFilter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        let now = msg.now;
        let Packet::Rtcp(packets) = &mut msg.message.packet else {
            self.read.push_back(msg);
            return Ok(());
        };
        if !packets
            .iter()
            .any(|p| p.as_any().downcast_ref::<TransportLayerNack>().is_some())
        {
            self.read.push_back(msg);
            return Ok(());
        }
        self.policy.refill(now);
        let mut kept: Vec<Box<dyn rtc::rtcp::Packet>> = Vec::with_capacity(packets.len());
        for p in packets.drain(..) {
            let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                kept.push(p);
                continue;
            };
            let (allowed, unanswerable) = self.policy.allow(now, nack);
            if unanswerable {
                // First in the compound: rtc hands a compound to the track its first
                // packet names.
                kept.insert(
                    0,
                    Box::new(PictureLossIndication {
                        sender_ssrc: nack.sender_ssrc,
                        media_ssrc: nack.media_ssrc,
                    }),
                );
            }
            if !allowed.is_empty() {
                kept.push(Box::new(TransportLayerNack {
                    sender_ssrc: nack.sender_ssrc,
                    media_ssrc: nack.media_ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&allowed),
                }));
            }
        }
        // An empty compound means something else in the chain (see `Packet::Rtcp`).
        if !kept.is_empty() {
            *packets = kept;
            self.read.push_back(msg);
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            self.policy
                .record_sent(p.header.ssrc, p.header.sequence_number);
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for NackFilter {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::nack_policy::{HOLE_GRACE, MAX_RESENDS, SENT_WINDOW};
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
    use rtc::shared::{TransportContext, TransportMessage};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn nack(seqs: &[u16]) -> TaggedPacket {
        nack_at(Instant::now(), seqs)
    }

    fn nack_at(now: Instant, seqs: &[u16]) -> TaggedPacket {
        let n = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 7,
            nacks: nack_pairs_from_sequence_numbers(seqs),
        };
        TransportMessage {
            now,
            transport: TransportContext::default(),
            message: rtc::interceptor::AttributedPacket::new(Packet::Rtcp(vec![Box::new(n)])),
        }
    }

    fn passed(f: &mut NackFilter) -> Vec<u16> {
        let mut out = Vec::new();
        while let Some(m) = f.poll_read() {
            if let Packet::Rtcp(ps) = &m.message.packet {
                for p in ps {
                    if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                        out.extend(n.nacks.iter().flat_map(NackPair::packet_list));
                    }
                }
            }
        }
        out
    }

    fn filter() -> (NackFilter, Arc<ChainShared>) {
        let shared = Arc::new(ChainShared::default());
        (NackFilter::new(shared.clone()), shared)
    }

    #[test]
    fn a_repeated_nack_within_a_round_trip_is_not_answered_twice() {
        let t0 = Instant::now();
        let (mut f, counters) = filter();
        f.handle_read(nack_at(t0, &[10, 11, 12])).unwrap();
        assert_eq!(passed(&mut f), vec![10, 11, 12]);
        // Asked again at once: nothing goes (and the empty NACK goes nowhere).
        f.handle_read(nack_at(t0 + Duration::from_millis(20), &[10, 11]))
            .unwrap();
        assert_eq!(passed(&mut f), Vec::<u16>::new());
        // After a round trip it may be resent, up to the limit.
        let mut at = t0;
        for _ in 0..5 {
            at += Duration::from_millis(100);
            f.handle_read(nack_at(at, &[10])).unwrap();
        }
        let n = passed(&mut f).len();
        assert_eq!(n, usize::from(MAX_RESENDS) - 1, "resends after the first");
        assert_eq!(counters.nacks.named.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_flood_of_nacks_is_held_to_the_budget() {
        let t0 = Instant::now();
        let (mut f, _) = filter();
        // 1000 distinct packets named within 100 ms: without an estimate, 200/s.
        for i in 0..10u16 {
            let seqs: Vec<u16> = (i * 100..i * 100 + 100).collect();
            f.handle_read(nack_at(
                t0 + Duration::from_millis(u64::from(i) * 10),
                &seqs,
            ))
            .unwrap();
        }
        let n = passed(&mut f).len();
        assert!(n <= 45, "{n} resends in 100 ms");
        assert!(n > 0);
    }

    fn send(f: &mut NackFilter, ssrc: u32, seq: u16) {
        let mut p = rtc::rtp::packet::Packet::default();
        p.header.ssrc = ssrc;
        p.header.sequence_number = seq;
        f.handle_write(TransportMessage {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: rtc::interceptor::AttributedPacket::new(Packet::Rtp(p)),
        })
        .unwrap();
        while f.poll_write().is_some() {}
    }

    fn plis(f: &mut NackFilter) -> (Vec<u16>, usize) {
        let mut nacked = Vec::new();
        let mut plis = 0;
        while let Some(m) = f.poll_read() {
            if let Packet::Rtcp(ps) = &m.message.packet {
                for p in ps {
                    if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                        nacked.extend(n.nacks.iter().flat_map(NackPair::packet_list));
                    }
                    plis +=
                        usize::from(p.as_any().downcast_ref::<PictureLossIndication>().is_some());
                }
            }
        }
        (nacked, plis)
    }

    #[test]
    fn a_nack_for_a_packet_never_sent_becomes_a_keyframe_request() {
        let (mut f, counters) = filter();
        // 294 and 296 went out; 295 never did. Across the wrap as well.
        for seq in [65534, 65535, 0, 294, 296] {
            send(&mut f, 7, seq);
        }
        let t0 = Instant::now();
        f.handle_read(nack_at(t0, &[294])).unwrap();
        assert_eq!(plis(&mut f), (vec![294], 0), "a sent packet is resent");
        // 295 may still come (the publisher's retransmission): not yet a keyframe.
        f.handle_read(nack_at(t0, &[295, 296])).unwrap();
        assert_eq!(plis(&mut f), (vec![296], 0));
        f.handle_read(nack_at(t0 + Duration::from_millis(100), &[295]))
            .unwrap();
        assert_eq!(plis(&mut f), (vec![], 0));
        // Still not sent after the grace: the hole asks for a keyframe, once.
        f.handle_read(nack_at(t0 + HOLE_GRACE, &[295])).unwrap();
        assert_eq!(plis(&mut f), (vec![], 1), "the hole asks for a keyframe");
        assert_eq!(counters.nacks.unanswerable.load(Ordering::Relaxed), 1);
        // A hole filled in time is resent like any other packet.
        send(&mut f, 7, 298);
        f.handle_read(nack_at(t0, &[297])).unwrap();
        send(&mut f, 7, 297);
        f.handle_read(nack_at(t0 + HOLE_GRACE * 2, &[297])).unwrap();
        assert_eq!(plis(&mut f), (vec![297], 0));
        // Older than the responder's buffer: gone at once.
        for seq in 299..299 + SENT_WINDOW {
            send(&mut f, 7, seq);
        }
        f.handle_read(nack_at(t0 + HOLE_GRACE * 3, &[296])).unwrap();
        assert_eq!(plis(&mut f), (vec![], 1));
        assert_eq!(counters.nacks.unanswerable.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn other_rtcp_passes_untouched() {
        let (mut f, _) = filter();
        let rr = rtc::rtcp::receiver_report::ReceiverReport::default();
        f.handle_read(TransportMessage {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: rtc::interceptor::AttributedPacket::new(Packet::Rtcp(vec![Box::new(rr)])),
        })
        .unwrap();
        assert!(f.poll_read().is_some());
        let _ = nack(&[1]);
    }
}
