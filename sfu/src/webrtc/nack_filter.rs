//! Keeps retransmissions from feeding the congestion they answer.
//!
//! rtc's NACK responder resends every packet a NACK names, as often as it is named. On a
//! congested line that is a storm: the queue drops the retransmissions, the receiver asks
//! again every few tens of milliseconds, and the answers crowd out everything else (seen:
//! 8 Mbit/s of retransmissions towards a 600 kbit/s line, audio lost with them). This filter
//! sits wire-ward of the responder and takes out of each incoming NACK:
//! - packets resent within the last round trip (the answer may still be on its way);
//! - packets resent [`MAX_RESENDS`] times already (the frame they belong to is gone);
//! - whatever exceeds a budget of a quarter of the estimated bandwidth.
//!
//! As libwebrtc's packet history does, which is why browsers never storm.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::sansio::Protocol;

use super::feedback::ChainShared;

/// Its place in the chain: wire-ward of the NACK responder (4 000), above the pacer slot.
pub(super) const SLOT: usize = 3_500;
const MAX_RESENDS: u8 = 3;
/// The least time between two resends of one packet (a round trip on a good line).
const MIN_RESEND_GAP: Duration = Duration::from_millis(60);
/// Share of the estimated bandwidth retransmissions may take, at an assumed packet size.
const BUDGET_SHARE: f64 = 0.25;
const ASSUMED_PACKET_BITS: f64 = 1_000.0 * 8.0;
/// Without an estimate, this many resends per second at most.
const DEFAULT_BUDGET_PER_S: f64 = 200.0;
/// Packets remembered (the responder's own buffer is smaller).
const REMEMBERED: usize = 4096;

/// Counters the peer reports: packets named by NACKs (once each) and resends let through.
#[derive(Debug, Default)]
pub(super) struct NackCounters {
    pub named: AtomicU64,
    pub allowed: AtomicU64,
}

pub(super) struct NackFilter {
    shared: Arc<ChainShared>,
    /// Per packet named: when it was last let through, and how many times.
    resent: HashMap<(u32, u16), (Option<Instant>, u8)>,
    order: VecDeque<(u32, u16)>,
    tokens: f64,
    refilled: Option<Instant>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl NackFilter {
    pub fn new(shared: Arc<ChainShared>) -> Self {
        NackFilter {
            shared,
            resent: HashMap::new(),
            order: VecDeque::new(),
            tokens: 0.0,
            refilled: None,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_s = self
            .shared
            .bandwidth
            .estimate_bps()
            .map_or(DEFAULT_BUDGET_PER_S, |b| {
                (b as f64 * BUDGET_SHARE / ASSUMED_PACKET_BITS).max(20.0)
            });
        let elapsed = self
            .refilled
            .map_or(0.1, |t| now.saturating_duration_since(t).as_secs_f64());
        self.refilled = Some(now);
        // A burst of a tenth of a second's budget at most.
        self.tokens = (self.tokens + per_s * elapsed).min(per_s / 10.0 + 1.0);
    }

    /// The sequence numbers of `nack` that may be resent now.
    fn allow(&mut self, now: Instant, nack: &TransportLayerNack) -> Vec<u16> {
        let mut out = Vec::new();
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                let key = (nack.media_ssrc, seq);
                let (last, resends) = match self.resent.get(&key) {
                    Some(&(last, n)) => (last, n),
                    None => {
                        // Named for the first time: remember it, count it once.
                        self.shared.nacks.named.fetch_add(1, Ordering::Relaxed);
                        self.order.push_back(key);
                        if self.order.len() > REMEMBERED
                            && let Some(old) = self.order.pop_front()
                        {
                            self.resent.remove(&old);
                        }
                        self.resent.insert(key, (None, 0));
                        (None, 0)
                    }
                };
                let due = last.is_none_or(|t| now.saturating_duration_since(t) >= MIN_RESEND_GAP);
                if resends >= MAX_RESENDS || !due || self.tokens < 1.0 {
                    continue;
                }
                self.tokens -= 1.0;
                self.shared.nacks.allowed.fetch_add(1, Ordering::Relaxed);
                self.resent.insert(key, (Some(now), resends + 1));
                out.push(seq);
            }
        }
        out
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
        self.refill(now);
        let mut kept: Vec<Box<dyn rtc::rtcp::Packet>> = Vec::with_capacity(packets.len());
        for p in packets.drain(..) {
            let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                kept.push(p);
                continue;
            };
            let allowed = self.allow(now, nack);
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
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
    use rtc::shared::{TransportContext, TransportMessage};

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
