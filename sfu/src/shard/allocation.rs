//! Four times a second, for each subscriber: which layer of each video it receives, so that what
//! the SFU sends fits the bandwidth estimated towards it (the decision is `allocator`'s).
//!
//! A step down needs the estimate to find the current layers too much twice running (one
//! congestion signal is not a trend), or once during the trial of a step up. Pausing a video
//! needs a queue on the path for three decisions running: a moment's delay (a starved CPU at
//! either end reads as one) costs a layer at most, never the picture. Steps up go
//! one layer at a time, and not for a while after a step down (longer each time a step up
//! failed soon after), so that a subscriber on a line that cannot carry the next layer does
//! not flap between two. There is no padding probe: a step up is its own probe, undone at
//! the first congestion signal while a home router's queue still absorbs the excess. What
//! each subscriber carries from one decision to the next is `allocator::subscriber`'s.

use std::time::{Duration, Instant};

use super::ShardCore;
use super::demux::SessionKey;
use crate::allocator::{self, VideoDemand};
use crate::ids::TrackId;
use crate::media::MediaKind;

const ALLOCATE_EVERY: Duration = Duration::from_millis(250);
/// A step up must fit this share of the estimate; the rest absorbs keyframes,
/// retransmissions and the estimate's own error.
const UPGRADE_HEADROOM: f64 = 0.85;
/// What is being sent is kept while it fits the estimate divided by this. GCC backs off to
/// 85% of what arrived when it sees the queue grow, so its estimate right after a backoff
/// is below what the line just carried; dividing that back out keeps a single congestion
/// signal from costing a layer, while a line that really carries less still loses it.
const KEEP_TOLERANCE: f64 = 0.85;
/// Decisions in a row that must find the current layers too much before a step down...
const STEP_DOWN_AFTER: u8 = 2;
/// ...unless the line is clearly congested: what is sent is this much over what may be
/// kept, or a queue this long is building on the path. Every moment more fills the home
/// router's queue towards dropping audio, so then the step is taken at once, and the old
/// layer stops before the new one's keyframe arrives.
const SEVERE_OVERUSE: f64 = 1.3;
const SEVERE_QUEUE_MS: u64 = 80;
/// How long after a step up a sign of congestion undoes it at once.
const UPGRADE_TRIAL: Duration = Duration::from_secs(3);

/// One video subscription being decided.
struct Decision {
    track: TrackId,
    /// The publisher's layers being sent, lowest quality first.
    ranked: Vec<u8>,
    now: Now,
}

/// Where a subscriber stands on one video.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Now {
    /// Paused for bandwidth.
    Paused,
    /// On the layer of this rank.
    At(usize),
    /// On a layer the publisher stopped sending: it moves at once.
    Stale,
}

impl ShardCore {
    /// Measure every publication's layers and decide each due subscriber's.
    pub(super) fn allocate_layers(&mut self, now: Instant) {
        for (_, room) in self.rooms.iter_mut() {
            for p in room.tracks.values_mut() {
                p.measure_layers(now);
            }
        }
        let due: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.connected_once && now >= s.allocation.next_at)
            .map(|(k, _)| k)
            .collect();
        for key in due {
            self.allocate_session(key, now);
        }
    }

    fn allocate_session(&mut self, key: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.allocation.next_at = now + ALLOCATE_EVERY;
        let Some(room) = self.rooms.get(s.room) else {
            return;
        };
        let mut audio_bps = 0;
        let mut decisions = Vec::new();
        let mut demands = Vec::new();
        for track in s.subscriptions.values() {
            let Some(p) = room.tracks.get(track) else {
                continue;
            };
            let Some(sub) = p.subscribers.iter().find(|sub| sub.session == key) else {
                continue;
            };
            if p.codec.kind() == MediaKind::Audio {
                audio_bps += p.layers.first().map_or(0, |l| l.bps);
                continue;
            }
            let ranked = p.ranked_layers(now);
            let layers_bps = ranked
                .iter()
                .map(|&l| p.layers[usize::from(l)].bps.max(1))
                .collect();
            let now_at = match sub.down.target() {
                None => Now::Paused,
                Some(t) => ranked
                    .iter()
                    .position(|&l| l == t)
                    .map_or(Now::Stale, Now::At),
            };
            demands.push(VideoDemand {
                layers_bps,
                max_quality: sub.max_quality,
                priority: sub.pinned || p.interpreter,
            });
            decisions.push(Decision {
                track: *track,
                ranked,
                now: now_at,
            });
        }
        if decisions.is_empty() {
            return;
        }
        let lowest: u64 = audio_bps
            + demands
                .iter()
                .map(|d| d.layers_bps.first().copied().unwrap_or(0))
                .sum::<u64>();
        let estimate = s
            .peer
            .bandwidth_estimate()
            .map(|e| s.allocation.believable(e, lowest, now));
        // A queue building on the path means it carries less than is sent, whatever the
        // estimate says yet: then what arrives is what the line can carry.
        let path = s.peer.path_feedback();
        let queue_ms = path.map(|(q, _)| q);
        let congested = queue_ms.is_some_and(|q| q > SEVERE_QUEUE_MS);
        let keep_budget = estimate.map(|e| {
            let keep = (e as f64 / KEEP_TOLERANCE) as u64;
            match path {
                Some((_, delivered)) if congested => keep.min(delivered * 95 / 100),
                _ => keep,
            }
        });
        let mut keep = allocator::allocate(keep_budget, audio_bps, &demands);
        if !s.allocation.may_pause(congested) {
            // Pausing is the last resort, for a line that keeps queueing. Loss alone (a bad
            // Wi-Fi) pulls the estimate down too, but a paused video would not bring the
            // packets back; the lowest layer stays.
            for k in &mut keep {
                k.get_or_insert(0);
            }
        }
        let up = allocator::allocate(
            estimate.map(|e| (e as f64 * UPGRADE_HEADROOM) as u64),
            audio_bps,
            &demands,
        );
        let over = decisions.iter().zip(&keep).any(|(d, k)| match (d.now, k) {
            (Now::At(c), Some(k)) => *k < c,
            (Now::At(_), None) => true,
            _ => false,
        });
        let sending: u64 = audio_bps
            + decisions
                .iter()
                .zip(&demands)
                .filter_map(|(d, demand)| match d.now {
                    Now::At(c) => demand.layers_bps.get(c).copied(),
                    _ => None,
                })
                .sum::<u64>();
        let severe = over
            && (congested
                || keep_budget.is_some_and(|k| sending as f64 > k as f64 * SEVERE_OVERUSE));
        s.allocation.pressure = if over {
            s.allocation.pressure.saturating_add(1)
        } else {
            0
        };
        // A step up that the line does not carry is undone at the first sign: the queue it
        // builds in the home router is what delays everyone's audio.
        let trying_upgrade = s
            .allocation
            .last_upgrade
            .is_some_and(|t| now.duration_since(t) < UPGRADE_TRIAL);
        let step_down =
            s.allocation.pressure >= STEP_DOWN_AFTER || severe || (over && trying_upgrade);
        let may_step_up = !over && s.allocation.may_step_up(now);
        let (mut downs, mut ups) = (0u64, 0u64);
        let mut changes = Vec::new();
        for ((d, keep), up) in decisions.into_iter().zip(keep).zip(up) {
            if d.ranked.is_empty() {
                continue; // nothing is being sent: keep what it had
            }
            let next = match d.now {
                Now::Stale => up.or(keep),
                Now::At(c) if step_down && keep.is_none_or(|k| k < c) => {
                    downs += 1;
                    keep
                }
                Now::At(c) if may_step_up && up.is_some_and(|u| u > c) => {
                    ups += 1;
                    Some(c + 1)
                }
                Now::At(c) => Some(c),
                Now::Paused if may_step_up && up.is_some() => {
                    ups += 1;
                    Some(0)
                }
                Now::Paused => None,
            };
            let unchanged = match d.now {
                Now::At(c) => next == Some(c),
                Now::Paused => next.is_none(),
                Now::Stale => false,
            };
            if !unchanged {
                changes.push((d.track, next.map(|q| d.ranked[q])));
            }
        }
        if downs > 0 {
            s.allocation.pressure = 0;
            s.allocation.stepped_down(now);
            if congested && let Some((_, delivered)) = path {
                s.allocation.ceiling = Some((delivered, now));
            }
        } else if ups > 0 {
            s.allocation.last_upgrade = Some(now);
        }
        self.metrics
            .layer_switches
            .with_label_values(&["down"])
            .inc_by(downs);
        self.metrics
            .layer_switches
            .with_label_values(&["up"])
            .inc_by(ups);
        if !changes.is_empty() {
            tracing::debug!(
                shard = self.index,
                participant = %s.participant,
                estimate_kbps = estimate.map(|e| e / 1000),
                sending_kbps = sending / 1000,
                queue_ms,
                severe,
                pressure = s.allocation.pressure,
                ?changes,
                "video layers changed"
            );
        }
        let rkey = s.room;
        let mut keyframes = Vec::new();
        for (track, target) in changes {
            let Some(p) = self.rooms[rkey].tracks.get_mut(&track) else {
                continue;
            };
            let Some(sub) = p.subscribers.iter_mut().find(|sub| sub.session == key) else {
                continue;
            };
            let needs_keyframe = if severe {
                sub.down.set_target_now(target)
            } else {
                sub.down.set_target(target)
            };
            if needs_keyframe && sub.ready {
                keyframes.push(track);
            }
        }
        for track in keyframes {
            self.request_keyframe(track, now);
        }
    }
}
