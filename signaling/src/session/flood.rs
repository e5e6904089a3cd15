//! How much one client may send (PROTOCOL.md: a rate, a burst, a byte budget), and when a
//! flood closes the connection.
//!
//! Two token buckets: messages and bytes. A message is taken only if both have room;
//! otherwise it is dropped. Drops fill a third bucket, which drains at a fixed rate: a client
//! whose drops outrun that rate for long enough fills it and is cut off (`flooding`).
//! Messages that are let through in between do not empty it: a client that stays just over
//! the limit, with some messages accepted all along, is cut off all the same. The caller
//! passes `now`, so the rule is tested without waiting.

use std::time::{Duration, Instant};

/// Drops within [`WINDOW`] that close the connection (PROTOCOL.md says "more than 100
/// within 10 seconds").
pub(crate) const MAX_DROPPED: f64 = 100.0;

/// The window over which drops are counted: the count drains by `MAX_DROPPED` per window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    level: f64,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn full(rate: f64, burst: f64) -> Bucket {
        Bucket {
            level: burst,
            rate,
            burst,
        }
    }

    fn refill(&mut self, elapsed: f64) {
        self.level = (self.level + elapsed * self.rate).min(self.burst);
    }
}

/// What becomes of a message (or a refused frame) the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Within the limits: handle it (or answer its refusal).
    Taken,
    /// Over the limits: dropped unanswered; `first` of a run of drops gets one
    /// `rate_limited`.
    Dropped { first: bool },
    /// The drops piled up: close the connection with `flooding`.
    Flooding,
}

/// One connection's budget.
#[derive(Debug)]
pub(crate) struct Budget {
    messages: Bucket,
    bytes: Bucket,
    /// Drops, draining at `MAX_DROPPED` per `WINDOW`.
    dropped: f64,
    /// The last message was dropped (the next drop is not the first of its run).
    in_run: bool,
    last: Instant,
}

impl Budget {
    pub fn new(
        messages_per_second: u32,
        burst: u32,
        bytes_per_second: u32,
        byte_burst: u32,
        now: Instant,
    ) -> Budget {
        Budget {
            messages: Bucket::full(messages_per_second.into(), burst.into()),
            bytes: Bucket::full(bytes_per_second.into(), byte_burst.into()),
            dropped: 0.0,
            in_run: false,
            last: now,
        }
    }

    /// Spend a message of `size` bytes at `now`.
    pub fn spend(&mut self, size: usize, now: Instant) -> Spend {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.messages.refill(elapsed);
        self.bytes.refill(elapsed);
        let drain = MAX_DROPPED / WINDOW.as_secs_f64();
        self.dropped = (self.dropped - elapsed * drain).max(0.0);
        let size = size as f64;
        if self.messages.level >= 1.0 && self.bytes.level >= size {
            self.messages.level -= 1.0;
            self.bytes.level -= size;
            self.in_run = false;
            return Spend::Taken;
        }
        self.dropped += 1.0;
        if self.dropped > MAX_DROPPED {
            return Spend::Flooding;
        }
        let first = !std::mem::replace(&mut self.in_run, true);
        Spend::Dropped { first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(now: Instant) -> Budget {
        Budget::new(20, 40, 64 * 1024, 256 * 1024, now)
    }

    /// Send `count` messages of `size` bytes, `per_second` of them a second; the index of
    /// the one that got `Flooding`, if any.
    fn flood(b: &mut Budget, t0: Instant, count: u32, per_second: u32, size: usize) -> Option<u32> {
        (0..count).find(|i| {
            let at = t0 + Duration::from_secs_f64(f64::from(*i) / f64::from(per_second));
            b.spend(size, at) == Spend::Flooding
        })
    }

    #[test]
    fn a_client_within_the_limits_is_never_cut_off() {
        let t0 = Instant::now();
        let mut b = budget(t0);
        // 15 small messages a second for ten minutes, an SDP of 20 KB every 10 seconds.
        for i in 0..15 * 600 {
            let size = if i % 150 == 0 { 20_000 } else { 200 };
            let at = t0 + Duration::from_secs_f64(f64::from(i) / 15.0);
            assert_eq!(b.spend(size, at), Spend::Taken, "message {i}");
        }
    }

    #[test]
    fn a_burst_is_answered_then_dropped_with_one_rate_limited() {
        let t0 = Instant::now();
        let mut b = budget(t0);
        for _ in 0..40 {
            assert_eq!(b.spend(100, t0), Spend::Taken);
        }
        assert_eq!(b.spend(100, t0), Spend::Dropped { first: true });
        assert_eq!(b.spend(100, t0), Spend::Dropped { first: false });
        // Once the rate allows one again, the next run of drops gets its own first.
        assert_eq!(b.spend(100, t0 + Duration::from_millis(60)), Spend::Taken);
        let later = t0 + Duration::from_millis(61);
        assert_eq!(b.spend(100, later), Spend::Dropped { first: true });
    }

    #[test]
    fn allowed_messages_between_drops_do_not_save_a_sustained_flood() {
        // The attack that kept a connection open: 1,500 messages of 60 KB a second. Some get
        // through all along (the rate refills), which used to reset the count of drops.
        let t0 = Instant::now();
        let mut b = budget(t0);
        let cut = flood(&mut b, t0, 15_000, 1500, 60_000).expect("cut off");
        assert!(
            cut < 1500,
            "cut off after {cut} messages, within the first second"
        );
        // Small messages just over the rate: 40 a second against 20.
        let mut b = budget(t0);
        let cut = flood(&mut b, t0, 4000, 40, 100).expect("cut off");
        let seconds = f64::from(cut) / 40.0;
        assert!(seconds < 20.0, "cut off after {seconds} s");
    }

    #[test]
    fn the_byte_budget_drops_what_the_message_rate_would_let_through() {
        let t0 = Instant::now();
        let mut b = budget(t0);
        // Four 60 KB messages fit the burst; the fifth does not, though the message rate
        // has room for 36 more.
        for _ in 0..4 {
            assert_eq!(b.spend(60_000, t0), Spend::Taken);
        }
        assert_eq!(b.spend(60_000, t0), Spend::Dropped { first: true });
        // A second later the sustained rate (64 KiB/s) lets one through.
        assert_eq!(b.spend(60_000, t0 + Duration::from_secs(1)), Spend::Taken);
        // Twenty messages of 60 KB a second are cut off in the end: 19 of 20 are dropped,
        // more than the count of drops drains.
        let mut b = budget(t0);
        assert!(flood(&mut b, t0, 1000, 20, 60_000).is_some());
    }
}
