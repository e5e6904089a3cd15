//! Freezes of a received video, by WebRTC's rule on the gaps between complete frames.

/// Freezes of a received video: WebRTC's rule on the gaps between complete frames.
#[derive(Default)]
pub(crate) struct FreezeDetector {
    last_us: Option<u64>,
    /// Mean frame interval (exponentially weighted), microseconds.
    mean_us: f64,
    frames: u64,
    pub count: u64,
    pub total_us: u64,
}

impl FreezeDetector {
    pub fn on_frame(&mut self, at_us: u64) {
        if let Some(last) = self.last_us.replace(at_us) {
            let gap = at_us.saturating_sub(last) as f64;
            // The mean needs a few frames before a gap can be judged against it.
            if self.frames >= 10 && gap > (3.0 * self.mean_us).max(self.mean_us + 150_000.0) {
                self.count += 1;
                self.total_us += gap as u64;
            } else {
                let w = if self.frames < 10 { 0.5 } else { 1.0 / 30.0 };
                self.mean_us += (gap - self.mean_us) * w;
            }
        }
        self.frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_gap_between_frames_is_a_freeze_and_steady_frames_are_not() {
        let mut f = FreezeDetector::default();
        let mut t = 0;
        for _ in 0..60 {
            t += 33_333;
            f.on_frame(t);
        }
        assert_eq!(f.count, 0);
        // 150 ms is within max(3 x 33 ms, 33 ms + 150 ms): no freeze; 400 ms is one.
        t += 150_000;
        f.on_frame(t);
        assert_eq!(f.count, 0);
        t += 400_000;
        f.on_frame(t);
        assert_eq!((f.count, f.total_us), (1, 400_000));
    }
}
