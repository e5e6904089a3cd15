//! Which packets a NACK may have again: keeps retransmissions from feeding the congestion
//! they answer.
//!
//! Resending every packet a NACK names, as often as it is named, is a storm on a congested
//! line: the queue drops the retransmissions, the receiver asks again every few tens of
//! milliseconds, and the answers crowd out everything else (seen: 8 Mbit/s of
//! retransmissions towards a 600 kbit/s line, audio lost with them). [`NackPolicy`] takes
//! out of each incoming NACK:
//! - packets resent within the last round trip (the answer may still be on its way);
//! - packets resent [`MAX_RESENDS`] times already (the frame they belong to is gone);
//! - whatever exceeds a budget of the estimated bandwidth itself.
//!
//! As libwebrtc's sender does (its retransmission rate limiter is the target bitrate), which
//! is why browsers never storm.
//!
//! A NACK for a packet this connection never sent (or sent too long ago for the resend
//! history) cannot be answered at all: the receiver would wait for it until its own keyframe
//! request, seconds later, with the picture frozen. Such a NACK becomes a keyframe request
//! (PLI) for the application, which asks the publisher at once. A packet the SFU has not sent
//! *yet* (lost on the publisher's side, its retransmission on the way) gets [`HOLE_GRACE`]
//! before it counts as never coming.
//!
//! Two users: the `nack_filter` interceptor in front of rtc's NACK responder, and the
//! forwarding fast path (`fast`), which answers NACKs itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

use super::feedback::ChainShared;

pub(super) const MAX_RESENDS: u8 = 3;
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
pub(super) const HOLE_GRACE: Duration = Duration::from_millis(200);
/// Holes remembered with the time they were first named.
const REMEMBERED_HOLES: usize = 256;
/// Sequence numbers remembered as sent, per SSRC: the NACK responder's history, so a packet
/// outside it cannot be answered either.
pub(super) const SENT_WINDOW: u16 = super::engine::NACK_HISTORY;

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

pub(super) struct NackPolicy {
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
}

impl NackPolicy {
    pub fn new(shared: Arc<ChainShared>) -> Self {
        NackPolicy {
            shared,
            resent: HashMap::new(),
            sent: Vec::new(),
            holes: VecDeque::new(),
            order: VecDeque::new(),
            tokens: 0.0,
            refilled: None,
        }
    }

    pub fn refill(&mut self, now: Instant) {
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

    /// Forgets a stream no longer sent.
    pub fn forget(&mut self, ssrc: u32) {
        self.sent.retain(|w| w.ssrc != ssrc);
    }

    pub fn record_sent(&mut self, ssrc: u32, seq: u16) {
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
    pub fn allow(&mut self, now: Instant, nack: &TransportLayerNack) -> (Vec<u16>, bool) {
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
