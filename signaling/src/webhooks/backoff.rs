//! When a failed delivery is tried again: exponential backoff with jitter, so that a
//! receiver that comes back is not hit by every replica's retries at the same instant.

use std::time::Duration;

/// The delay after the `attempt`-th failure (1 for the first): `initial * 2^(attempt-1)`,
/// capped at `max`, then scaled by a factor in [0.5, 1.0) from `jitter` (a uniform draw in
/// [0, 1)) ("equal jitter": never less than half the nominal delay).
pub fn delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let nominal = initial.saturating_mul(1u32 << exponent.min(31)).min(max);
    nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// [`delay`] with a random jitter.
pub fn random_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    delay(attempt, initial, max, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_up_to_the_cap() {
        let max = Duration::from_secs(60);
        let at = |n| delay(n, S, max, 1.0);
        assert_eq!(at(1), S);
        assert_eq!(at(2), 2 * S);
        assert_eq!(at(3), 4 * S);
        assert_eq!(at(7), max);
        assert_eq!(at(1000), max);
    }

    #[test]
    fn jitter_takes_at_most_half() {
        let max = Duration::from_secs(60);
        assert_eq!(delay(3, S, max, 0.0), 2 * S);
        let d = delay(3, S, max, 0.5);
        assert!(d > 2 * S && d < 4 * S, "{d:?}");
        for _ in 0..100 {
            let d = random_delay(4, S, max);
            assert!(d >= 4 * S && d <= 8 * S, "{d:?}");
        }
    }
}
