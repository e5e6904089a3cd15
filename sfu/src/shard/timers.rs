//! Deadlines of the peer connections on one media thread. Each session asks for at most one
//! wake-up at a time; re-arming leaves the old entry in the heap, and it is skipped when it
//! surfaces (cheaper than removing it).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

pub use crate::session::SessionUid;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, SessionUid)>>,
}

impl Timers {
    pub fn arm(&mut self, at: Instant, session: SessionUid) {
        self.heap.push(Reverse((at, session)));
    }

    /// The earliest deadline, possibly stale.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Take the next entry due at `now`. The caller checks it against the session's current
    /// deadline and ignores it if stale.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, SessionUid)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_come_out_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(t0 + Duration::from_millis(30), 1);
        t.arm(t0 + Duration::from_millis(10), 2);
        t.arm(t0 + Duration::from_millis(20), 3);
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        let due: Vec<_> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_millis(25)))
            .map(|(_, s)| s)
            .collect();
        assert_eq!(due, vec![2, 3]);
        assert_eq!(t.len(), 1);
    }
}
