//! Which media thread takes a new room, and whether the node can take it at all.
//!
//! Placement must hold under a burst: at the top of the hour a clinic opens dozens of
//! consultations within a second, long before any media thread has measured the load they
//! bring. So a room counts against its thread the moment it is placed (the node's own
//! record, not the thread's later report), and each room placed since a thread last
//! measured itself is taken to cost what an average room costs on this node. The thread
//! with the least estimated load wins; a burst onto idle threads therefore lands within one
//! room of even. Shared rooms (a mixer's 20 ms ticks) and consultations (latency-sensitive
//! forwarding) keep to separate threads where the node has enough of them.
//!
//! Pure logic: the node gathers the figures and applies the choice.

use crate::room::RoomKind;

/// What a room costs before anything is measured: a share of one thread.
const DEFAULT_ROOM_SHARE: f64 = 0.01;

/// One media thread as placement sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadLoad {
    /// Rooms placed on the thread, by the node's own count (up to date).
    pub consultations: usize,
    pub shared_rooms: usize,
    /// The thread's measured busy share of wall time (0 to 1), and how many rooms it had
    /// when it measured that.
    pub busy: f64,
    pub rooms_measured: usize,
}

impl ThreadLoad {
    fn rooms(&self) -> usize {
        self.consultations + self.shared_rooms
    }

    fn hosts_other_kind(&self, kind: RoomKind) -> bool {
        match kind {
            RoomKind::Consultation => self.shared_rooms > 0,
            RoomKind::Shared => self.consultations > 0,
        }
    }
}

/// The estimated busy share of each thread: what it measured, plus an average room's share
/// for every room placed on it since.
pub fn estimates(threads: &[ThreadLoad]) -> Vec<f64> {
    let busy: f64 = threads.iter().map(|t| t.busy).sum();
    let measured: usize = threads.iter().map(|t| t.rooms_measured).sum();
    let per_room = if measured > 0 {
        (busy / measured as f64).max(DEFAULT_ROOM_SHARE)
    } else {
        DEFAULT_ROOM_SHARE
    };
    threads
        .iter()
        .map(|t| t.busy + per_room * t.rooms().saturating_sub(t.rooms_measured) as f64)
        .collect()
}

/// The thread for a new room of `kind`, or `None` when every thread that may take it
/// measured itself at `max_busy` or more (the node is overloaded: place the room
/// elsewhere). Refusal goes by what was measured, not by the estimate: a room costs nothing
/// until people join, and each join is checked against its thread's measured load again.
pub fn choose(threads: &[ThreadLoad], kind: RoomKind, max_busy: f64) -> Option<usize> {
    let estimates = estimates(threads);
    let pick = |apart: bool| {
        (0..threads.len())
            .filter(|&i| !apart || !threads[i].hosts_other_kind(kind))
            .filter(|&i| threads[i].busy < max_busy)
            .min_by(|&a, &b| {
                estimates[a]
                    .total_cmp(&estimates[b])
                    .then(threads[a].rooms().cmp(&threads[b].rooms()))
            })
    };
    // Apart from the other kind where possible; sharing a thread beats refusing the room.
    pick(threads.len() > 1).or_else(|| pick(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(threads: &mut [ThreadLoad], kind: RoomKind) -> usize {
        let i = choose(threads, kind, 0.9).expect("room for it");
        match kind {
            RoomKind::Consultation => threads[i].consultations += 1,
            RoomKind::Shared => threads[i].shared_rooms += 1,
        }
        i
    }

    #[test]
    fn a_burst_of_64_rooms_on_4_threads_is_spread_evenly() {
        // Nobody has measured anything yet: the burst comes before the first report.
        let mut threads = vec![ThreadLoad::default(); 4];
        for _ in 0..64 {
            place(&mut threads, RoomKind::Consultation);
        }
        let counts: Vec<usize> = threads.iter().map(|t| t.consultations).collect();
        assert_eq!(counts, vec![16, 16, 16, 16]);
        // And at every step of an odd burst, within one room of even.
        let mut threads = vec![ThreadLoad::default(); 4];
        for n in 1..=37 {
            place(&mut threads, RoomKind::Consultation);
            let max = threads.iter().map(|t| t.consultations).max().unwrap();
            let min = threads.iter().map(|t| t.consultations).min().unwrap();
            assert!(max - min <= 1, "after {n}: {threads:?}");
        }
    }

    #[test]
    fn measured_load_counts_more_than_room_counts() {
        // Thread 0 has few rooms but they are busy (large calls); thread 1 many quiet ones.
        let threads = vec![
            ThreadLoad {
                consultations: 2,
                busy: 0.6,
                rooms_measured: 2,
                ..Default::default()
            },
            ThreadLoad {
                consultations: 10,
                busy: 0.1,
                rooms_measured: 10,
                ..Default::default()
            },
        ];
        assert_eq!(choose(&threads, RoomKind::Consultation, 0.9), Some(1));
    }

    #[test]
    fn rooms_placed_since_the_last_measurement_count_at_the_average_cost() {
        // Both measured 20% with 10 rooms (2% a room); thread 1 has since taken 5 more.
        let mut threads = vec![
            ThreadLoad {
                consultations: 10,
                busy: 0.2,
                rooms_measured: 10,
                ..Default::default()
            };
            2
        ];
        threads[1].consultations = 15;
        let e = estimates(&threads);
        assert!((e[1] - 0.3).abs() < 1e-9, "{e:?}");
        assert_eq!(choose(&threads, RoomKind::Consultation, 0.9), Some(0));
    }

    #[test]
    fn shared_rooms_and_consultations_keep_apart_where_there_are_threads() {
        let mut threads = vec![ThreadLoad::default(); 3];
        let hall = place(&mut threads, RoomKind::Shared);
        for _ in 0..10 {
            assert_ne!(place(&mut threads, RoomKind::Consultation), hall);
        }
        // A second shared room joins the first one's thread rather than a consultation's.
        assert_eq!(place(&mut threads, RoomKind::Shared), hall);
        // With one thread, everything shares it.
        let mut one = vec![ThreadLoad::default()];
        place(&mut one, RoomKind::Shared);
        assert_eq!(place(&mut one, RoomKind::Consultation), 0);
    }

    #[test]
    fn a_burst_onto_an_idle_thread_is_never_refused_on_estimates_alone() {
        let mut one = vec![ThreadLoad::default()];
        for _ in 0..500 {
            place(&mut one, RoomKind::Consultation);
        }
        assert_eq!(one[0].consultations, 500);
    }

    #[test]
    fn a_node_whose_threads_are_all_busy_is_overloaded() {
        let threads = vec![
            ThreadLoad {
                consultations: 40,
                busy: 0.85,
                rooms_measured: 40,
                ..Default::default()
            };
            2
        ];
        assert_eq!(choose(&threads, RoomKind::Consultation, 0.8), None);
        // Sharing with the other kind is better than refusing, though.
        let mut mixed = threads.clone();
        mixed.push(ThreadLoad {
            shared_rooms: 1,
            busy: 0.3,
            rooms_measured: 1,
            ..Default::default()
        });
        assert_eq!(choose(&mixed, RoomKind::Consultation, 0.8), Some(2));
    }
}
