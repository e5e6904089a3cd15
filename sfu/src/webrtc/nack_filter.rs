//! Keeps retransmissions from feeding the congestion they answer.
//!
//! rtc's NACK responder resends every packet a NACK names, as often as it is named. On a
//! congested line that is a storm: the queue drops the retransmissions, the receiver asks
//! again every few tens of milliseconds, and the answers crowd out everything else (seen:
//! 8 Mbit/s of retransmissions towards a 600 kbit/s line, audio lost with them). This filter
//! sits wire-ward of the responder and takes out of each incoming NACK:
//! - packets resent within the last round trip (the answer may still be on its way);
//! - packets resent [`MAX_RESENDS`] times already (the frame they belong to is gone);
//! - whatever exceeds a budget of the estimated bandwidth itself.
//!
//! As libwebrtc's sender does (its retransmission rate limiter is the target bitrate), which
//! is why browsers never storm.
//!
//! A NACK for a packet this connection never sent (or sent too long ago for the responder's
//! buffer) cannot be answered at all: the receiver would wait for it until its own keyframe
//! request, seconds later, with the picture frozen. The filter turns such a NACK into a
//! keyframe request (PLI) for the application, which asks the publisher at once. A packet
//! the SFU has not sent *yet* (lost on the publisher's side, its retransmission on the way)
//! gets [`HOLE_GRACE`] before it counts as never coming.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
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
const BUDGET_SHARE: f64 = 1.0;
const ASSUMED_PACKET_BITS: f64 = 1_000.0 * 8.0;
/// Without an estimate, this many resends per second at most.
const DEFAULT_BUDGET_PER_S: f64 = 200.0;
/// Packets remembered (the responder's own buffer is smaller).
const REMEMBERED: usize = 4096;
/// How long a packet NACKed but not sent yet may still come (the SFU's own NACK upstream
/// and the publisher's retransmission) before the receiver is given a keyframe instead.
const HOLE_GRACE: Duration = Duration::from_millis(200);
/// Holes remembered with the time they were first named.
const REMEMBERED_HOLES: usize = 256;
/// Sequence numbers remembered as sent, per SSRC: the NACK responder's history, so a packet
/// outside it cannot be answered either.
const SENT_WINDOW: u16 = super::engine::NACK_HISTORY;

/// Counters the peer reports: packets named by NACKs (once each), resends let through, and
/// packets named that were never sent or are no longer held.
#[derive(Debug, Default)]
pub(super) struct NackCounters {
    pub named: AtomicU64,
    pub allowed: AtomicU64,
    pub unanswerable: AtomicU64,
}

/// Which of the last [`SENT_WINDOW`] sequence numbers of one SSRC went out.
struct SentWindow {
    ssrc: u32,
    highest: u16,
    bits: [u64; SENT_WINDOW as usize / 64],
}

impl SentWindow {
    fn new(ssrc: u32, seq: u16) -> Self {
        let mut w = SentWindow {
            ssrc,
            highest: seq,
            bits: [0; SENT_WINDOW as usize / 64],
        };
        w.set(seq);
        w
    }

    fn set(&mut self, seq: u16) {
        let i = usize::from(seq % SENT_WINDOW);
        self.bits[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, seq: u16) {
        let i = usize::from(seq % SENT_WINDOW);
        self.bits[i / 64] &= !(1 << (i % 64));
    }

    fn record(&mut self, seq: u16) {
        let ahead = seq.wrapping_sub(self.highest);
        if ahead != 0 && ahead < 0x8000 {
            // Newer: the slots skipped over are not sent (yet); a jump beyond the window
            // forgets everything.
            if ahead >= SENT_WINDOW {
                self.bits = [0; SENT_WINDOW as usize / 64];
            } else {
                for s in 1..ahead {
                    self.clear(self.highest.wrapping_add(s));
                }
            }
            self.highest = seq;
        } else if self.highest.wrapping_sub(seq) >= SENT_WINDOW {
            return;
        }
        self.set(seq);
    }

    /// Where `seq` stands: sent and held, not sent (yet), or beyond the window.
    fn lookup(&self, seq: u16) -> Sent {
        if self.highest.wrapping_sub(seq) >= SENT_WINDOW {
            return Sent::Gone;
        }
        let i = usize::from(seq % SENT_WINDOW);
        if self.bits[i / 64] & (1 << (i % 64)) != 0 {
            Sent::Held
        } else {
            Sent::NotYet
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Held,
    NotYet,
    Gone,
}

pub(super) struct NackFilter {
    shared: Arc<ChainShared>,
    /// Per packet named: when it was last let through, and how many times.
    resent: HashMap<(u32, u16), (Option<Instant>, u8)>,
    order: VecDeque<(u32, u16)>,
    tokens: f64,
    refilled: Option<Instant>,
    /// What went out, per SSRC we send on (a handful per connection).
    sent: Vec<SentWindow>,
    /// Packets NACKed before they were sent, and when they were first named.
    holes: VecDeque<((u32, u16), Instant)>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl NackFilter {
    pub fn new(shared: Arc<ChainShared>) -> Self {
        NackFilter {
            shared,
            resent: HashMap::new(),
            sent: Vec::new(),
            holes: VecDeque::new(),
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

    fn record_sent(&mut self, ssrc: u32, seq: u16) {
        match self.sent.iter_mut().find(|w| w.ssrc == ssrc) {
            Some(w) => w.record(seq),
            None => self.sent.push(SentWindow::new(ssrc, seq)),
        }
    }

    /// A packet named that is not held: gone for good, or not sent for [`HOLE_GRACE`]?
    /// Each hole counts once.
    fn never_coming(&mut self, now: Instant, key: (u32, u16), sent: Sent) -> bool {
        // Holes filled since, or never named again, age out (they are in time order).
        while self
            .holes
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) > HOLE_GRACE * 10)
        {
            self.holes.pop_front();
        }
        let first = self.holes.iter().find(|(k, _)| *k == key).map(|(_, t)| *t);
        let gone = match (sent, first) {
            (Sent::Gone, _) => true,
            (_, Some(t)) => now.saturating_duration_since(t) >= HOLE_GRACE,
            (_, None) => {
                if self.holes.len() >= REMEMBERED_HOLES {
                    self.holes.pop_front();
                }
                self.holes.push_back((key, now));
                false
            }
        };
        if gone {
            self.holes.retain(|(k, _)| *k != key);
        }
        gone
    }

    /// The sequence numbers of `nack` that may be resent now, and whether it named a packet
    /// that cannot be resent at all (never sent, or no longer held).
    fn allow(&mut self, now: Instant, nack: &TransportLayerNack) -> (Vec<u16>, bool) {
        let mut out = Vec::new();
        let mut unanswerable = false;
        let window = self.sent.iter().position(|w| w.ssrc == nack.media_ssrc);
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                let sent = window.map_or(Sent::Held, |w| self.sent[w].lookup(seq));
                if sent != Sent::Held {
                    if self.never_coming(now, (nack.media_ssrc, seq), sent) {
                        self.shared
                            .nacks
                            .unanswerable
                            .fetch_add(1, Ordering::Relaxed);
                        unanswerable = true;
                    }
                    continue;
                }
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
        (out, unanswerable)
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
            let (allowed, unanswerable) = self.allow(now, nack);
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
            self.record_sent(p.header.ssrc, p.header.sequence_number);
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
