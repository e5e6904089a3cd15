//! What the fast path sent, by transport-wide sequence number, until the subscriber's
//! feedback says what arrived: a fixed ring (rtc's own history keeps three hash maps and
//! inserts into each per packet).

use std::time::{Duration, Instant};

use rtc::interceptor::{Acknowledgement, PacketReport};
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

/// Packets remembered at most: over a second and a half of two 1.2 Mbit/s videos and their
/// audio, where feedback comes every 50 to 100 ms.
pub(super) const RECORDS: usize = 512;
/// The ring a connection starts with: what a 300 kbit/s video and its audio send between two
/// feedbacks a few times over. It doubles when a packet would push out one that feedback has
/// not covered yet and that is still worth reporting.
const FIRST_RECORDS: usize = 128;
/// A packet feedback has not covered after this long is not waited for (the ring does not
/// grow for it): the estimator has moved on.
const FEEDBACK_HORIZON: Duration = Duration::from_secs(1);
const NOT_ARRIVED: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    /// The packet's number in send order (its transport-wide sequence number unwrapped),
    /// plus one: 0 marks an empty slot.
    id: u64,
    ssrc: u32,
    sequence_number: u16,
    size: u16,
    /// Microseconds after the ring's epoch.
    departure_us: u64,
    /// The receiver's clock, microseconds (from its feedback), once acknowledged as arrived;
    /// [`NOT_ARRIVED`] before.
    arrival_us: u64,
}

pub(super) struct SendRecords {
    slots: Box<[Record]>,
    epoch: Instant,
    /// The next packet's id (see `Record::id`).
    next_id: u64,
    /// The highest id reported as arrived, and the first not yet handed to the estimator.
    highest_arrived: Option<u64>,
    next_to_report: u64,
}

impl SendRecords {
    pub fn new(epoch: Instant) -> Self {
        SendRecords {
            slots: vec![Record::default(); FIRST_RECORDS].into_boxed_slice(),
            epoch,
            next_id: 1,
            highest_arrived: None,
            next_to_report: 1,
        }
    }

    /// Records a packet leaving now; returns its transport-wide sequence number.
    pub fn on_sent(&mut self, now: Instant, ssrc: u32, sequence_number: u16, size: usize) -> u16 {
        let id = self.next_id;
        self.next_id += 1;
        let departure_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        if self.must_grow(id, departure_us) {
            self.grow();
        }
        let len = self.slots.len();
        self.slots[id as usize % len] = Record {
            id,
            ssrc,
            sequence_number,
            size: size.min(usize::from(u16::MAX)) as u16,
            departure_us,
            arrival_us: NOT_ARRIVED,
        };
        Self::transport_sequence(id)
    }

    /// Would packet `id`, leaving at `departure_us`, push out a record feedback has not
    /// covered yet, young enough to still be reported?
    fn must_grow(&self, id: u64, departure_us: u64) -> bool {
        let old = &self.slots[id as usize % self.slots.len()];
        self.slots.len() < RECORDS
            && old.id >= self.next_to_report
            && departure_us.saturating_sub(old.departure_us) < FEEDBACK_HORIZON.as_micros() as u64
    }

    /// Twice the slots, each record moved to its new place (they span fewer ids than the old
    /// ring, so none collide).
    fn grow(&mut self) {
        let len = (self.slots.len() * 2).min(RECORDS);
        let old = std::mem::replace(&mut self.slots, vec![Record::default(); len].into());
        for r in old.iter().filter(|r| r.id != 0) {
            self.slots[r.id as usize % len] = *r;
        }
    }

    /// Ids start at 1; transport-wide sequence numbers at 0.
    fn transport_sequence(id: u64) -> u16 {
        (id - 1) as u16
    }

    /// The id of a transport-wide sequence number, if it is one of the packets held.
    fn id_of(&self, sequence: u16) -> Option<u64> {
        let latest = self.next_id.checked_sub(1).filter(|&l| l > 0)?;
        let behind = u64::from(Self::transport_sequence(latest).wrapping_sub(sequence));
        let id = latest.checked_sub(behind).filter(|&id| id > 0)?;
        (self.slots[id as usize % self.slots.len()].id == id).then_some(id)
    }

    pub fn on_acknowledgement(&mut self, ack: &Acknowledgement) {
        let Some(id) = self.id_of(ack.sequence_number) else {
            return;
        };
        let len = self.slots.len();
        let record = &mut self.slots[id as usize % len];
        record.arrival_us = match ack.arrival {
            Some(a) if ack.arrived => (a.as_micros() as u64).min(NOT_ARRIVED - 1),
            _ => NOT_ARRIVED,
        };
        if ack.arrived {
            self.highest_arrived = Some(self.highest_arrived.map_or(id, |h| h.max(id)));
        }
    }

    /// Everything up to the highest packet reported as arrived, in send order, once each:
    /// packets before it without an acknowledgement count as lost.
    pub fn take_reports(&mut self, reports: &mut Vec<PacketReport>) {
        let Some(highest) = self.highest_arrived else {
            return;
        };
        // Older than the ring: forgotten.
        let len = self.slots.len();
        let oldest = self.next_id.saturating_sub(len as u64).max(1);
        for id in self.next_to_report.max(oldest)..=highest {
            let r = self.slots[id as usize % len];
            if r.id != id {
                continue;
            }
            let arrived = r.arrival_us != NOT_ARRIVED;
            reports.push(PacketReport {
                ssrc: r.ssrc,
                id,
                rtp_sequence_number: r.sequence_number,
                is_twcc: true,
                twcc_sequence_number: Self::transport_sequence(id),
                size: usize::from(r.size),
                arrived,
                departure: self.epoch + Duration::from_micros(r.departure_us),
                arrival: arrived.then(|| Duration::from_micros(r.arrival_us)),
                ecn: Ecn::NotEct,
            });
        }
        self.next_to_report = self.next_to_report.max(highest + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(seq: u16, at_ms: u64) -> Acknowledgement {
        Acknowledgement::received(seq, Some(Duration::from_millis(at_ms)), Ecn::NotEct)
    }

    #[test]
    fn reports_come_in_send_order_once_with_the_losses_between() {
        let t0 = Instant::now();
        let mut r = SendRecords::new(t0);
        for i in 0..10u16 {
            let seq = r.on_sent(t0 + Duration::from_millis(u64::from(i)), 7, 100 + i, 1200);
            assert_eq!(seq, i);
        }
        for seq in [0u16, 1, 3, 4] {
            r.on_acknowledgement(&received(seq, 50 + u64::from(seq)));
        }
        r.on_acknowledgement(&Acknowledgement::lost(2));
        let mut reports = Vec::new();
        r.take_reports(&mut reports);
        let got: Vec<(u16, bool)> = reports
            .iter()
            .map(|p| (p.twcc_sequence_number, p.arrived))
            .collect();
        assert_eq!(
            got,
            [(0, true), (1, true), (2, false), (3, true), (4, true)]
        );
        assert_eq!(reports[3].rtp_sequence_number, 103);
        assert_eq!(reports[3].departure, t0 + Duration::from_millis(3));
        assert_eq!(reports[3].arrival, Some(Duration::from_millis(53)));
        reports.clear();
        r.take_reports(&mut reports);
        assert!(reports.is_empty(), "each packet is reported once");
        // A late acknowledgement of a packet already reported changes nothing.
        r.on_acknowledgement(&received(2, 60));
        r.take_reports(&mut reports);
        assert!(reports.is_empty());
    }

    #[test]
    fn sequence_numbers_wrap_and_old_packets_are_forgotten() {
        let t0 = Instant::now();
        let mut r = SendRecords::new(t0);
        for i in 0..70_000u32 {
            r.on_sent(t0, 1, i as u16, 100);
        }
        // The last packet sent was number 69 999, transport-wide 69 999 - 65 536 = 4463.
        r.on_acknowledgement(&received(4463, 1));
        // One sent over a ring ago is unknown (same low bits, long gone).
        r.on_acknowledgement(&received(4463u16.wrapping_sub(RECORDS as u16), 1));
        let mut reports = Vec::new();
        r.take_reports(&mut reports);
        assert_eq!(reports.len(), RECORDS, "only what the ring holds");
        let last = reports.last().unwrap();
        assert!(last.arrived && last.twcc_sequence_number == 4463);
        assert!(reports[..RECORDS - 1].iter().all(|p| !p.arrived));
    }

    #[test]
    fn the_ring_grows_only_while_feedback_lags_behind() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 100 packets a second with feedback every 100 ms: the first ring is enough.
        let mut r = SendRecords::new(t0);
        let mut reports = Vec::new();
        for i in 0..1000u64 {
            let seq = r.on_sent(at(i * 10), 1, i as u16, 1000);
            r.on_acknowledgement(&received(seq, i * 10 + 20));
            if i % 10 == 9 {
                r.take_reports(&mut reports);
            }
        }
        assert_eq!(r.slots.len(), FIRST_RECORDS);
        assert_eq!(reports.len(), 1000, "every packet reported once");
        // 400 a second, feedback late by half a second: grows to hold it.
        let mut r = SendRecords::new(t0);
        for i in 0..400u64 {
            r.on_sent(at(i * 5 / 2), 1, i as u16, 1000);
        }
        assert_eq!(r.slots.len(), RECORDS);
        r.on_acknowledgement(&received(399, 1500));
        reports.clear();
        r.take_reports(&mut reports);
        assert_eq!(reports.len(), 400);
        // No feedback at all: the ring stops growing once what it holds is past waiting for.
        let mut r = SendRecords::new(t0);
        for i in 0..2000u64 {
            r.on_sent(at(i * 20), 1, i as u16, 1000);
        }
        assert_eq!(r.slots.len(), FIRST_RECORDS);
    }
}
