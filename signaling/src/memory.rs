//! Memory given back after bursts of closed connections.
//!
//! Each connection's buffers are small (crate::http sizes a WebSocket's for what a client
//! may send before it joins), but thousands of them come and go together in a flood. glibc's
//! allocator keeps freed memory in its arenas for reuse and returns it to the system only
//! from the top of a heap, so after a burst of closes the process can stay as large as at
//! the peak. `malloc_trim(0)` hands back every free page of every arena; it walks the arenas
//! under their locks, so it runs after bursts, not on every close, and on a blocking thread.
//! Other allocators (or other C libraries) need none of this: there it does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the trimmer looks at the count of closed connections.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Closes that make a burst worth trimming at once.
const BURST: u64 = 64;

/// After fewer closes, the trim waits this long (churn of ordinary sessions).
const TRICKLE_AFTER: Duration = Duration::from_secs(60);

/// Counts closed connections and trims after bursts of them.
#[derive(Debug, Default)]
pub struct Trimmer {
    closed: AtomicU64,
    trims: AtomicU64,
}

impl Trimmer {
    /// A connection closed (its buffers are free now).
    pub fn note_closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// How many trims ran.
    pub fn trims(&self) -> u64 {
        self.trims.load(Ordering::Relaxed)
    }

    /// Whether `closed` closes, the last trim `since` ago, call for a trim.
    fn due(closed: u64, since: Duration) -> bool {
        closed >= BURST || (closed > 0 && since >= TRICKLE_AFTER)
    }

    /// Trim after bursts of closes, until the trimmer is dropped by everyone else.
    pub async fn run(me: std::sync::Weak<Trimmer>) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let Some(trimmer) = me.upgrade() else { return };
            let closed = trimmer.closed.load(Ordering::Relaxed);
            if !Self::due(closed, last.elapsed()) {
                continue;
            }
            trimmer.closed.fetch_sub(closed, Ordering::Relaxed);
            last = Instant::now();
            let _ = tokio::task::spawn_blocking(trim).await;
            trimmer.trims.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Give free heap memory back to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reads and updates the allocator's own state, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_trim_at_once_and_trickles_later() {
        assert!(!Trimmer::due(0, Duration::from_secs(3600)));
        assert!(!Trimmer::due(BURST - 1, Duration::from_secs(2)));
        assert!(Trimmer::due(BURST, Duration::from_secs(2)));
        assert!(Trimmer::due(1, TRICKLE_AFTER));
    }

    #[test]
    fn trimming_is_safe_to_call_any_time() {
        let v: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 4096]).collect();
        drop(v);
        trim();
        trim();
    }
}
