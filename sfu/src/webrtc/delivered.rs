//! What a subscriber demonstrably receives: the bytes its transport-wide feedback reports as
//! arrived over about the last second, kept in ten buckets of 100 ms. A sample per packet
//! (rtc's `RateCalculator`) held a few kilobytes per connection for the same answer.

use std::time::{Duration, Instant};

const BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_millis(100);

#[derive(Clone, Copy)]
struct Bucket {
    /// Which 100 ms since the epoch this bucket counts (older ones are stale).
    number: u64,
    bytes: u64,
    packets: u32,
    /// When its first packet was acknowledged: where a rate's span starts.
    first: Instant,
}

pub(super) struct DeliveredRate {
    epoch: Instant,
    buckets: [Option<Bucket>; BUCKETS],
}

impl DeliveredRate {
    pub fn new(epoch: Instant) -> Self {
        DeliveredRate {
            epoch,
            buckets: [None; BUCKETS],
        }
    }

    fn number(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_millis() / BUCKET.as_millis()) as u64
    }

    /// `size` bytes were acknowledged as arrived at `now`.
    pub fn add(&mut self, now: Instant, size: usize) {
        let number = self.number(now);
        let slot = &mut self.buckets[number as usize % BUCKETS];
        match slot {
            Some(b) if b.number == number => {
                b.bytes += size as u64;
                b.packets += 1;
            }
            _ => {
                *slot = Some(Bucket {
                    number,
                    bytes: size as u64,
                    packets: 1,
                    first: now,
                })
            }
        }
    }

    /// Bits per second over the buckets of the last second, from the first packet among
    /// them; `None` while they hold fewer than two packets (a rate needs a span), so that
    /// a gap in feedback does not read as a path delivering nothing.
    pub fn bits_per_second(&self, now: Instant) -> Option<f64> {
        let newest = self.number(now);
        let live = self
            .buckets
            .iter()
            .flatten()
            .filter(|b| b.number + BUCKETS as u64 > newest && b.number <= newest);
        let (mut bytes, mut packets, mut first) = (0u64, 0u32, None::<Instant>);
        for b in live {
            bytes += b.bytes;
            packets += b.packets;
            first = Some(first.map_or(b.first, |f| f.min(b.first)));
        }
        let span = now.saturating_duration_since(first?);
        (packets >= 2 && !span.is_zero()).then(|| (bytes * 8) as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_flow_reads_as_its_rate() {
        let t0 = Instant::now();
        let mut d = DeliveredRate::new(t0);
        assert_eq!(d.bits_per_second(t0), None);
        // 100 packets of 1000 bytes a second (800 kbit/s) for three seconds.
        for i in 1..=300u64 {
            d.add(t0 + Duration::from_millis(i * 10), 1000);
        }
        let rate = d.bits_per_second(t0 + Duration::from_millis(3000)).unwrap();
        assert!((rate - 800_000.0).abs() < 800_000.0 * 0.12, "{rate}");
    }

    #[test]
    fn the_rate_forgets_what_is_past_the_window_and_needs_two_packets() {
        let t0 = Instant::now();
        let mut d = DeliveredRate::new(t0);
        d.add(t0, 1000);
        assert_eq!(d.bits_per_second(t0 + Duration::from_millis(50)), None);
        d.add(t0 + Duration::from_millis(50), 1000);
        let early = d.bits_per_second(t0 + Duration::from_millis(100)).unwrap();
        assert!(
            (early - 160_000.0).abs() < 1.0,
            "two packets over 100 ms: {early}"
        );
        // Two seconds later both are out of the window.
        assert_eq!(d.bits_per_second(t0 + Duration::from_secs(2)), None);
        // A bucket's slot reused for a later period counts only the later packets.
        d.add(t0 + Duration::from_millis(2000), 500);
        d.add(t0 + Duration::from_millis(2050), 500);
        let later = d.bits_per_second(t0 + Duration::from_millis(2100)).unwrap();
        assert!((later - 80_000.0).abs() < 1.0, "{later}");
    }
}
