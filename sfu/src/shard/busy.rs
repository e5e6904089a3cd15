//! How busy a media thread is: the share of wall time it spends working rather than waiting
//! in `poll`. Placement and admission read it; a thread near 100% delays every packet of
//! every call on it, so it takes no more work.

use std::time::{Duration, Instant};

/// How often the share is measured.
pub const WINDOW: Duration = Duration::from_secs(1);

pub struct BusyMeter {
    window_start: Instant,
    idle: Duration,
    polling_since: Option<Instant>,
    /// The last complete window's busy share (0 to 1).
    last: f64,
}

impl BusyMeter {
    pub fn new(now: Instant) -> Self {
        BusyMeter {
            window_start: now,
            idle: Duration::ZERO,
            polling_since: None,
            last: 0.0,
        }
    }

    pub fn before_poll(&mut self, now: Instant) {
        self.polling_since = Some(now);
    }

    pub fn after_poll(&mut self, now: Instant) {
        if let Some(t) = self.polling_since.take() {
            self.idle += now.saturating_duration_since(t);
        }
    }

    /// The busy share of the window that ended, once a window has passed.
    pub fn sample(&mut self, now: Instant) -> Option<f64> {
        let span = now.saturating_duration_since(self.window_start);
        if span < WINDOW {
            return None;
        }
        let busy = span.saturating_sub(self.idle).as_secs_f64() / span.as_secs_f64();
        self.window_start = now;
        self.idle = Duration::ZERO;
        self.last = busy.clamp(0.0, 1.0);
        Some(self.last)
    }

    pub fn last(&self) -> f64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_work_over_wall_time() {
        let t0 = Instant::now();
        let mut m = BusyMeter::new(t0);
        // 300 ms of work, then 700 ms waiting.
        m.before_poll(t0 + Duration::from_millis(300));
        m.after_poll(t0 + Duration::from_millis(1000));
        assert_eq!(m.sample(t0 + Duration::from_millis(900)), None);
        let busy = m.sample(t0 + Duration::from_millis(1000)).unwrap();
        assert!((busy - 0.3).abs() < 1e-6, "{busy}");
        assert!((m.last() - 0.3).abs() < 1e-6);
        // The next window starts afresh.
        m.before_poll(t0 + Duration::from_millis(1000));
        m.after_poll(t0 + Duration::from_millis(2000));
        assert!(m.sample(t0 + Duration::from_millis(2000)).unwrap() < 1e-6);
    }
}
