//! A subscriber's layer allocation over time: how long a step up must wait after a step
//! down, the ceiling congestion leaves on the estimate, and the run of congested decisions
//! a video needs before it pauses. The shard decides with it four times a second
//! (`shard::allocation`).

use std::time::{Duration, Instant};

/// Decisions in a row that must see a queue building on the path (longer than
/// `shard::allocation`'s severe queue) before a video may pause.
const PAUSE_AFTER: u8 = 3;
/// No step up for this long after a step down...
const UPGRADE_HOLD_MIN: Duration = Duration::from_secs(3);
/// ...doubling, up to this, when a step up was followed by a step down within
/// `FAILED_UPGRADE_WITHIN`.
const UPGRADE_HOLD_MAX: Duration = Duration::from_secs(60);
const FAILED_UPGRADE_WITHIN: Duration = Duration::from_secs(10);
/// After congestion, the estimate is believed only up to what the line carried then, growing
/// by this factor per second: GCC's own estimate keeps rising while the SFU sends less than
/// the line could take, and trusting it would try the layer that just failed again at once.
const CEILING_GROWTH_PER_S: f64 = 1.08;

/// A subscriber's side of layer allocation.
#[derive(Debug, Clone)]
pub struct LayerAllocation {
    pub(crate) next_at: Instant,
    hold_until: Option<Instant>,
    hold: Duration,
    pub(crate) last_upgrade: Option<Instant>,
    /// Decisions in a row that found the current layers over the estimate.
    pub(crate) pressure: u8,
    /// Decisions in a row that saw a queue building on the path.
    congested_for: u8,
    /// What the line carried when it was last congested, and when.
    pub(crate) ceiling: Option<(u64, Instant)>,
}

impl LayerAllocation {
    pub fn new(now: Instant) -> Self {
        LayerAllocation {
            next_at: now,
            hold_until: None,
            hold: UPGRADE_HOLD_MIN,
            last_upgrade: None,
            pressure: 0,
            congested_for: 0,
            ceiling: None,
        }
    }

    /// Something the decision depends on changed (a subscriber's preference).
    pub fn decide_soon(&mut self) {
        self.next_at = self.next_at.min(Instant::now());
    }

    pub(crate) fn stepped_down(&mut self, now: Instant) {
        let failed_upgrade = self
            .last_upgrade
            .is_some_and(|t| now.duration_since(t) < FAILED_UPGRADE_WITHIN);
        self.hold = if failed_upgrade {
            (self.hold * 2).min(UPGRADE_HOLD_MAX)
        } else {
            UPGRADE_HOLD_MIN
        };
        self.hold_until = Some(now + self.hold);
    }

    /// The estimate, as far as the last congestion lets it be believed. The ceiling never
    /// holds it below `floor` (every video at its lowest layer): what the line carried at
    /// the worst moment may be far below that, and it would keep paused videos paused long
    /// after the line recovered.
    pub(crate) fn believable(&mut self, estimate: u64, floor: u64, now: Instant) -> u64 {
        let Some((bps, at)) = self.ceiling else {
            return estimate;
        };
        let grown = bps as f64 * CEILING_GROWTH_PER_S.powf(now.duration_since(at).as_secs_f64());
        if grown >= estimate as f64 {
            self.ceiling = None;
            return estimate;
        }
        (grown as u64).max(floor).min(estimate)
    }

    /// Note whether this decision saw a queue on the path; may a video pause now?
    pub(crate) fn may_pause(&mut self, congested: bool) -> bool {
        self.congested_for = if congested {
            self.congested_for.saturating_add(1)
        } else {
            0
        };
        self.congested_for >= PAUSE_AFTER
    }

    pub(crate) fn may_step_up(&self, now: Instant) -> bool {
        self.hold_until.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_of_queueing_never_pauses_a_video() {
        let mut a = LayerAllocation::new(Instant::now());
        assert!(!a.may_pause(true));
        assert!(!a.may_pause(true));
        assert!(
            !a.may_pause(false),
            "the queue went away: the count starts again"
        );
        assert!(!a.may_pause(true));
        assert!(!a.may_pause(true));
        assert!(
            a.may_pause(true),
            "three decisions running: the line keeps queueing"
        );
    }

    #[test]
    fn after_congestion_the_estimate_is_believed_up_to_a_growing_ceiling_never_below_the_lowest_layers()
     {
        let t0 = Instant::now();
        let mut a = LayerAllocation::new(t0);
        assert_eq!(
            a.believable(1_000_000, 400_000, t0),
            1_000_000,
            "no congestion yet"
        );
        a.ceiling = Some((500_000, t0));
        let later = t0 + Duration::from_secs(2);
        let believed = a.believable(1_000_000, 100_000, later);
        assert_eq!(believed, (500_000.0 * CEILING_GROWTH_PER_S.powi(2)) as u64);
        // The worst moment carried almost nothing: the lowest layers may still be tried.
        a.ceiling = Some((50_000, t0));
        assert_eq!(a.believable(1_000_000, 400_000, later), 400_000);
        // ...but never more than the estimate itself.
        assert_eq!(a.believable(300_000, 400_000, later), 300_000);
        // Grown past the estimate: the ceiling is gone.
        a.ceiling = Some((900_000, t0));
        assert_eq!(a.believable(950_000, 0, later), 950_000);
        assert!(a.ceiling.is_none());
    }
}
