//! Log lines that an outsider (or a failing dependency) can cause as often as it likes are
//! rate-limited per source: the first line of an interval is written, the rest are counted
//! and the count rides on the next line written. A flood of refused connections or a file
//! watcher that fails in a loop then costs a line per interval, not the disk.
//!
//! What a client sent never goes into a log line as it is: values that carry client bytes
//! are logged with `?` (Debug: quoted, control characters escaped), never with `%`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many sources one limiter tracks; beyond that, further sources share one entry, so a
/// flood from many addresses cannot grow the table.
const MAX_SOURCES: usize = 1024;

/// The source that stands for all sources beyond [`MAX_SOURCES`].
const OTHERS: &str = "*";

/// One log line per source per interval.
pub struct Limiter {
    interval: Duration,
    // A std lock: held for a map lookup, never across an await.
    sources: Mutex<BTreeMap<String, Entry>>,
}

struct Entry {
    /// When the last line of this source was written.
    logged_at: Instant,
    /// Lines not written since.
    suppressed: u64,
}

impl Limiter {
    pub const fn new(interval: Duration) -> Limiter {
        Limiter {
            interval,
            sources: Mutex::new(BTreeMap::new()),
        }
    }

    /// May a line of `source` be written at `now`? `Some(n)`: yes, and `n` lines of this
    /// source were held back since the last one (say so in the line); `None`: count it and
    /// stay quiet.
    pub fn check(&self, source: &str, now: Instant) -> Option<u64> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !sources.contains_key(source) && sources.len() >= MAX_SOURCES {
            // Forget the sources that have been quiet for a whole interval first.
            sources.retain(|_, e| now.duration_since(e.logged_at) < self.interval);
        }
        let key = if sources.contains_key(source) || sources.len() < MAX_SOURCES {
            source
        } else {
            OTHERS
        };
        match sources.get_mut(key) {
            Some(e) if now.duration_since(e.logged_at) < self.interval => {
                e.suppressed += 1;
                None
            }
            Some(e) => {
                e.logged_at = now;
                Some(std::mem::take(&mut e.suppressed))
            }
            None => {
                sources.insert(
                    key.to_owned(),
                    Entry {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_source_per_interval_with_the_count_of_the_rest() {
        let limiter = Limiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", t0), Some(0));
        for i in 1..=500 {
            assert_eq!(limiter.check("a", t0 + Duration::from_millis(i)), None);
        }
        // Another source has its own interval.
        assert_eq!(limiter.check("b", t0 + Duration::from_secs(1)), Some(0));
        // The next interval's line says how many were held back.
        assert_eq!(limiter.check("a", t0 + Duration::from_secs(10)), Some(500));
        assert_eq!(limiter.check("a", t0 + Duration::from_secs(11)), None);
        assert_eq!(limiter.check("a", t0 + Duration::from_secs(20)), Some(1));
    }

    #[test]
    fn many_sources_share_one_entry_beyond_the_table() {
        let limiter = Limiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let written = (0..10_000)
            .filter(|i| {
                limiter
                    .check(&format!("10.0.{}.{}", i / 256, i % 256), t0)
                    .is_some()
            })
            .count();
        assert_eq!(
            written,
            MAX_SOURCES + 1,
            "one each, then one for all the others"
        );
        assert!(limiter.sources.lock().unwrap().len() <= MAX_SOURCES + 1);
        // Once the interval passed, quiet sources make room again.
        assert_eq!(limiter.check("new", t0 + Duration::from_secs(10)), Some(0));
        assert!(limiter.sources.lock().unwrap().len() <= 2);
    }
}
