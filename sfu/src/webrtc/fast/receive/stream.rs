//! One stream a publisher sends us, as its receiver keeps it: sequence numbers, loss and
//! jitter for receiver reports (RFC 3550 §6.4.2, appendix A.3 and A.8), and for video the
//! packets missing, to ask for again (RFC 4585 generic NACK).

use std::time::Instant;

use rtc::rtcp::reception_report::ReceptionReport;

/// Sequence numbers the NACK log looks back over: a few seconds of video. A packet is asked
/// for again at most `MAX_NACKS` times, once per NACK round (every 100 ms), so in practice
/// only the last second of it matters.
const NACK_WINDOW: usize = 512;
const MAX_NACKS: u8 = 10;

/// Which of the last `NACK_WINDOW` sequence numbers arrived, and how often each missing one
/// was asked for.
struct NackLog {
    received: [u64; NACK_WINDOW / 64],
    asked: [u8; NACK_WINDOW],
    /// The newest sequence number, and how many of the window's numbers are this stream's
    /// (at its start, fewer than the window).
    end: u16,
    span: usize,
}

impl NackLog {
    fn new(first: u16) -> Self {
        let mut log = NackLog {
            received: [0; NACK_WINDOW / 64],
            asked: [0; NACK_WINDOW],
            end: first,
            span: 1,
        };
        log.mark(first);
        log
    }

    fn slot(seq: u16) -> usize {
        usize::from(seq) % NACK_WINDOW
    }

    fn mark(&mut self, seq: u16) {
        let i = Self::slot(seq);
        self.received[i / 64] |= 1 << (i % 64);
    }

    fn is_marked(&self, seq: u16) -> bool {
        let i = Self::slot(seq);
        self.received[i / 64] & (1 << (i % 64)) != 0
    }

    fn add(&mut self, seq: u16) {
        let ahead = seq.wrapping_sub(self.end);
        if ahead == 0 {
            return;
        }
        if ahead < 0x8000 {
            if usize::from(ahead) >= NACK_WINDOW {
                // A jump past the window: nothing before it is worth asking for.
                self.received = [0; NACK_WINDOW / 64];
                self.asked = [0; NACK_WINDOW];
                self.span = 1;
            } else {
                // The numbers skipped are missing until they arrive.
                let mut s = self.end.wrapping_add(1);
                while s != seq {
                    let i = Self::slot(s);
                    self.received[i / 64] &= !(1 << (i % 64));
                    self.asked[i] = 0;
                    s = s.wrapping_add(1);
                }
                self.span = (self.span + usize::from(ahead)).min(NACK_WINDOW);
            }
            self.end = seq;
            self.mark(seq);
        } else if usize::from(self.end.wrapping_sub(seq)) < self.span {
            // Late, or a retransmission we asked for.
            self.mark(seq);
        }
    }

    /// The missing sequence numbers to ask for now, oldest first, into `out`.
    fn missing(&mut self, out: &mut Vec<u16>) {
        for back in (1..self.span).rev() {
            let seq = self.end.wrapping_sub(back as u16);
            let i = Self::slot(seq);
            if !self.is_marked(seq) && self.asked[i] < MAX_NACKS {
                self.asked[i] += 1;
                out.push(seq);
            }
        }
    }
}

pub(super) struct ReceivedStream {
    pub ssrc: u32,
    clock_rate: u32,
    /// RFC 3550 A.1: the first sequence number, the highest, and the wraps counted.
    base: u16,
    max: u16,
    cycles: u32,
    pub received: u64,
    pub bytes: u64,
    /// At the last report: expected and received (for the fraction lost since).
    expected_prior: u64,
    received_prior: u64,
    /// RFC 3550 A.8: the last relative transit time and the jitter, in timestamp units.
    transit: Option<f64>,
    jitter: f64,
    /// The publisher's last sender report (the middle 32 bits of its NTP time) and when it
    /// came, echoed in our reports for its round trip.
    last_sender_report: Option<(u32, Instant)>,
    nacks: Option<Box<NackLog>>,
}

impl ReceivedStream {
    /// A stream starting at `seq`; `nackable`: keep its NACK log (video).
    pub fn new(ssrc: u32, clock_rate: u32, seq: u16, nackable: bool) -> Self {
        ReceivedStream {
            ssrc,
            clock_rate: clock_rate.max(1),
            base: seq,
            max: seq,
            cycles: 0,
            received: 0,
            bytes: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter: 0.0,
            last_sender_report: None,
            nacks: nackable.then(|| Box::new(NackLog::new(seq))),
        }
    }

    /// A packet arrived `since_start` into the connection.
    pub fn on_packet(&mut self, since_start: f64, seq: u16, timestamp: u32, size: usize) {
        self.received += 1;
        self.bytes += size as u64;
        let ahead = seq.wrapping_sub(self.max);
        if ahead != 0 && ahead < 0x8000 {
            if seq < self.max {
                self.cycles += 1 << 16;
            }
            self.max = seq;
        }
        if let Some(log) = &mut self.nacks {
            log.add(seq);
        }
        let arrival = since_start * f64::from(self.clock_rate);
        let transit = arrival - f64::from(timestamp);
        if let Some(previous) = self.transit {
            // Timestamps wrap: the difference is taken in 32 bits.
            let d = ((transit - previous) as i64 as i32).unsigned_abs();
            self.jitter += (f64::from(d) - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
    }

    pub fn on_sender_report(&mut self, now: Instant, ntp_time: u64) {
        self.last_sender_report = Some(((ntp_time >> 16) as u32, now));
    }

    /// The highest sequence number with its wraps counted (RFC 3550's extended number).
    pub fn extended_max(&self) -> u64 {
        u64::from(self.cycles) + u64::from(self.max)
    }

    fn expected(&self) -> u64 {
        (self.extended_max() + 1).saturating_sub(u64::from(self.base))
    }

    /// Packets lost so far (expected, less received; duplicates can make it negative).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(self.clock_rate)
    }

    /// This stream's reception report block, which starts the next report's interval.
    pub fn report(&mut self, now: Instant) -> ReceptionReport {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| f.min(255) as u8);
        let (last_sender_report, delay) = match self.last_sender_report {
            Some((lsr, at)) => (
                lsr,
                (now.saturating_duration_since(at).as_secs_f64() * 65_536.0) as u32,
            ),
            None => (0, 0),
        };
        ReceptionReport {
            ssrc: self.ssrc,
            fraction_lost,
            total_lost: self.lost().min(0x7f_ffff) as u32,
            last_sequence_number: self.extended_max() as u32,
            jitter: self.jitter as u32,
            last_sender_report,
            delay,
        }
    }

    /// The sequence numbers to ask for again now (video only), into `out`.
    pub fn missing(&mut self, out: &mut Vec<u16>) {
        if let Some(log) = &mut self.nacks {
            log.missing(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_with(seqs: impl IntoIterator<Item = u16>) -> ReceivedStream {
        let mut seqs = seqs.into_iter();
        let first = seqs.next().unwrap();
        let mut s = ReceivedStream::new(7, 90_000, first, true);
        s.on_packet(0.0, first, 0, 100);
        for (i, seq) in seqs.enumerate() {
            s.on_packet(i as f64 * 0.01, seq, i as u32 * 900, 100);
        }
        s
    }

    #[test]
    fn a_gap_is_asked_for_until_it_arrives_or_too_often() {
        let mut s = stream_with((100..110).chain(112..120));
        let mut missing = Vec::new();
        s.missing(&mut missing);
        assert_eq!(missing, [110, 111]);
        s.on_packet(1.0, 110, 0, 100);
        for round in 1..MAX_NACKS {
            missing.clear();
            s.missing(&mut missing);
            assert_eq!(missing, [111], "round {round}");
        }
        missing.clear();
        s.missing(&mut missing);
        assert!(missing.is_empty(), "asked for more than {MAX_NACKS} times");
    }

    #[test]
    fn losses_are_counted_across_the_wrap() {
        let mut s = stream_with((65_530..=65_535).chain(0..10).filter(|&q| q != 3 && q != 4));
        assert_eq!(s.lost(), 2);
        let report = s.report(Instant::now());
        assert_eq!(report.total_lost, 2);
        assert_eq!(report.last_sequence_number, (1 << 16) | 9);
        assert_eq!(report.fraction_lost, (2 * 256 / 16) as u8);
        let mut missing = Vec::new();
        s.missing(&mut missing);
        assert_eq!(missing, [3, 4]);
        // The next interval lost nothing.
        for seq in 10..20 {
            s.on_packet(1.0, seq, 0, 100);
        }
        assert_eq!(s.report(Instant::now()).fraction_lost, 0);
    }

    #[test]
    fn a_jump_past_the_window_asks_for_nothing_before_it() {
        let mut s = stream_with([1, 2, 3, 2000, 2001]);
        let mut missing = Vec::new();
        s.missing(&mut missing);
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn steady_arrival_has_no_jitter_and_late_arrival_some() {
        let mut s = ReceivedStream::new(1, 90_000, 0, false);
        for i in 0..50u16 {
            s.on_packet(f64::from(i) * 0.02, i, u32::from(i) * 1800, 100);
        }
        assert!(s.jitter_ms() < 0.01, "{}", s.jitter_ms());
        s.on_packet(50.0 * 0.02 + 0.05, 50, 50 * 1800, 100);
        assert!(s.jitter_ms() > 2.0, "{}", s.jitter_ms());
    }

    #[test]
    fn the_sender_report_is_echoed_with_the_time_held() {
        let mut s = stream_with(0..5);
        let at = Instant::now();
        s.on_sender_report(at, 0x1234_5678_9abc_def0);
        let report = s.report(at + std::time::Duration::from_millis(500));
        assert_eq!(report.last_sender_report, 0x5678_9abc);
        assert_eq!(report.delay, 32_768);
    }
}
