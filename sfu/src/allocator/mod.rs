//! Which video each subscriber gets, given the bandwidth estimated towards it: pure logic,
//! called by the shard for each subscriber about once a second.
//!
//! Audio comes first and is never cut: its bitrate is set aside before any video. Video is
//! then given out in an order that says who gives way first when bandwidth falls:
//! 1. every video at its lowest layer; if even that does not fit, videos pause, the ordinary
//!    ones first (the last subscribed first), an interpreter's or a pinned one last;
//! 2. what is left raises layers: priority videos (interpreter, pinned) up to what their
//!    subscriber asked for first, then the others one step at a time in turn.
//!
//! So when the estimate drops, ordinary videos lose their upper layers first, then priority
//! videos theirs, then ordinary videos pause, and an interpreter's video is the last to go.

pub mod subscriber;

/// One video subscription as the allocator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoDemand {
    /// The bitrate of each layer the publisher sends now, lowest quality first, in bits per
    /// second. Empty when nothing has been measured yet.
    pub layers_bps: Vec<u64>,
    /// The highest quality (index into `layers_bps`) the subscriber wants, e.g. for a small
    /// tile; `None`: the best there is.
    pub max_quality: Option<usize>,
    /// An interpreter's or a pinned video: reduced last.
    pub priority: bool,
}

impl VideoDemand {
    fn ceiling(&self) -> usize {
        let top = self.layers_bps.len().saturating_sub(1);
        self.max_quality.map_or(top, |m| m.min(top))
    }

    fn cost(&self, quality: usize) -> u64 {
        self.layers_bps.get(quality).copied().unwrap_or(0)
    }
}

/// The quality each demand gets (an index into its `layers_bps`), `None` for paused, in the
/// order of `demands`. Without an estimate (`budget_bps` is `None`) everyone gets what they
/// asked for.
pub fn allocate(
    budget_bps: Option<u64>,
    audio_bps: u64,
    demands: &[VideoDemand],
) -> Vec<Option<usize>> {
    let Some(budget) = budget_bps else {
        return demands.iter().map(|d| Some(d.ceiling())).collect();
    };
    let mut left = budget.saturating_sub(audio_bps) as i128;
    // Who keeps their video longest: priority first, then in subscription order.
    let mut order: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].priority)
        .collect();
    order.extend((0..demands.len()).filter(|&i| !demands[i].priority));

    let mut out: Vec<Option<usize>> = vec![Some(0); demands.len()];
    left -= demands.iter().map(|d| d.cost(0) as i128).sum::<i128>();
    for &i in order.iter().rev() {
        if left >= 0 {
            break;
        }
        out[i] = None;
        left += demands[i].cost(0) as i128;
    }

    let step = |out: &mut Vec<Option<usize>>, left: &mut i128, i: usize| -> bool {
        let Some(q) = out[i] else { return false };
        let d = &demands[i];
        if q >= d.ceiling() {
            return false;
        }
        let extra = d.cost(q + 1) as i128 - d.cost(q) as i128;
        if extra > *left {
            return false;
        }
        *left -= extra;
        out[i] = Some(q + 1);
        true
    };
    for &i in order.iter().filter(|&&i| demands[i].priority) {
        while step(&mut out, &mut left, i) {}
    }
    let ordinary: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !demands[i].priority)
        .collect();
    loop {
        let mut raised = false;
        for &i in &ordinary {
            raised |= step(&mut out, &mut left, i);
        }
        if !raised {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1000;

    /// Three simulcast layers: 150, 400 and 1000 kbit/s.
    fn video(priority: bool) -> VideoDemand {
        VideoDemand {
            layers_bps: vec![150 * K, 400 * K, 1000 * K],
            max_quality: None,
            priority,
        }
    }

    #[test]
    fn without_an_estimate_everyone_gets_what_they_asked_for() {
        let mut small = video(false);
        small.max_quality = Some(1);
        assert_eq!(
            allocate(None, 0, &[video(false), small]),
            vec![Some(2), Some(1)]
        );
    }

    #[test]
    fn plenty_of_bandwidth_gives_the_top_layers() {
        let got = allocate(Some(5000 * K), 64 * K, &[video(false), video(true)]);
        assert_eq!(got, vec![Some(2), Some(2)]);
    }

    #[test]
    fn video_steps_down_before_audio_suffers_and_priority_goes_last() {
        let demands = [video(false), video(true)];
        let audio = 100 * K;
        // Falling bandwidth, and what each of (ordinary, priority) gets.
        let steps = [
            (2200, [Some(2), Some(2)]),
            (1600, [Some(1), Some(2)]),
            (1300, [Some(0), Some(2)]),
            (800, [Some(0), Some(1)]),
            (450, [Some(0), Some(0)]),
            (350, [None, Some(0)]),
            (200, [None, None]),
            (50, [None, None]),
        ];
        for (kbps, want) in steps {
            let got = allocate(Some(kbps * K), audio, &demands);
            assert_eq!(got, want, "at {kbps} kbit/s");
            // What is given out never exceeds what is left after audio.
            let used: u64 = got
                .iter()
                .zip(&demands)
                .filter_map(|(q, d)| q.map(|q| d.layers_bps[q]))
                .sum();
            assert!(
                used <= (kbps * K).saturating_sub(audio),
                "at {kbps} kbit/s: {used}"
            );
        }
    }

    #[test]
    fn ordinary_videos_share_the_rest_in_turn() {
        let demands = [video(false), video(false), video(false)];
        // 3 x 150 at the base, 650 left: one step of 250 each for two of them.
        let got = allocate(Some(1100 * K), 0, &demands);
        assert_eq!(got, vec![Some(1), Some(1), Some(0)]);
    }

    #[test]
    fn a_single_layer_track_is_sent_or_paused() {
        let single = VideoDemand {
            layers_bps: vec![500 * K],
            max_quality: None,
            priority: false,
        };
        assert_eq!(
            allocate(Some(600 * K), 50 * K, std::slice::from_ref(&single)),
            vec![Some(0)]
        );
        assert_eq!(allocate(Some(400 * K), 50 * K, &[single]), vec![None]);
    }

    #[test]
    fn an_unmeasured_track_costs_nothing_yet() {
        let new = VideoDemand {
            layers_bps: vec![],
            max_quality: None,
            priority: false,
        };
        assert_eq!(allocate(Some(10 * K), 0, &[new]), vec![Some(0)]);
    }
}
