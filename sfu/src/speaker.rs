//! The dominant speaker of a room, from the audio level every audio packet carries
//! (RFC 6464), without decoding anyone.
//!
//! Each participant's level is smoothed over a few hundred milliseconds; a decision every
//! [`DECIDE_EVERY`] picks the loudest above a floor, and a change needs the newcomer to stay
//! ahead by a margin for two decisions running, so that a cough or crosstalk does not flip
//! everyone's layout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ids::ParticipantId;

/// How often the dominant speaker is decided.
pub const DECIDE_EVERY: Duration = Duration::from_millis(250);
/// Levels at or below this many dB over the RFC 6464 floor (-127 dBov) count as silence:
/// -70 dBov is background noise.
const SILENCE: f32 = 57.0;
/// A smoothed level below this is nobody talking.
const FLOOR: f32 = 10.0;
/// How much louder (in smoothed dB above silence) a newcomer must be than the current speaker.
const MARGIN: f32 = 6.0;
/// A participant whose audio stopped arriving counts as silent after this.
const STALE: Duration = Duration::from_millis(400);
/// Per-packet smoothing weight of a new level (packets every 20 ms: a ~300 ms window).
const ALPHA: f32 = 0.07;

struct Level {
    smoothed: f32,
    last: Instant,
}

#[derive(Default)]
pub struct SpeakerDetector {
    levels: HashMap<ParticipantId, Level>,
    current: Option<ParticipantId>,
    /// Who led the last decision without being current yet.
    challenger: Option<ParticipantId>,
}

impl SpeakerDetector {
    /// One audio packet's level, in -dBov (0 loudest, 127 silence).
    pub fn on_level(&mut self, who: &ParticipantId, dbov: u8, now: Instant) {
        let above_silence = (127.0 - f32::from(dbov.min(127)) - SILENCE).max(0.0);
        match self.levels.get_mut(who) {
            Some(l) => {
                l.smoothed += ALPHA * (above_silence - l.smoothed);
                l.last = now;
            }
            None => {
                self.levels.insert(
                    who.clone(),
                    Level {
                        smoothed: ALPHA * above_silence,
                        last: now,
                    },
                );
            }
        }
    }

    /// `who` left. If they were the speaker, the next decision says who is now (or that
    /// nobody is), so that everyone hears of the change.
    pub fn remove(&mut self, who: &ParticipantId) {
        self.levels.remove(who);
    }

    fn level(&self, who: &ParticipantId, now: Instant) -> f32 {
        self.levels
            .get(who)
            .filter(|l| now.duration_since(l.last) < STALE)
            .map_or(0.0, |l| l.smoothed)
    }

    /// Decide; returns the new dominant speaker when it changed (`Some(None)`: nobody now).
    pub fn decide(&mut self, now: Instant) -> Option<Option<ParticipantId>> {
        let loudest = self
            .levels
            .keys()
            .map(|p| (p, self.level(p, now)))
            .filter(|(_, l)| *l >= FLOOR)
            .max_by(|a, b| {
                a.1.total_cmp(&b.1)
                    .then_with(|| b.0.as_str().cmp(a.0.as_str()))
            })
            .map(|(p, l)| (p.clone(), l));
        let current_level = self.current.as_ref().map_or(0.0, |c| self.level(c, now));
        let next = match loudest {
            None if self.current.is_some() && current_level < FLOOR => None,
            None => return None,
            Some((p, _)) if Some(&p) == self.current.as_ref() => {
                self.challenger = None;
                return None;
            }
            Some((p, l)) if current_level < FLOOR || l >= current_level + MARGIN => {
                // A newcomer wins on the second decision in a row.
                if self.challenger.as_ref() != Some(&p) {
                    self.challenger = Some(p);
                    return None;
                }
                Some(p)
            }
            Some(_) => {
                self.challenger = None;
                return None;
            }
        };
        self.challenger = None;
        if next == self.current {
            return None;
        }
        self.current = next.clone();
        Some(next)
    }

    pub fn current(&self) -> Option<&ParticipantId> {
        self.current.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ParticipantId {
        ParticipantId::new(s).unwrap()
    }

    /// `levels` per 20 ms packet for `ms`, deciding every 250 ms; returns the changes.
    fn talk(
        d: &mut SpeakerDetector,
        start: &mut Instant,
        ms: u64,
        levels: &[(&str, u8)],
    ) -> Vec<Option<String>> {
        let mut changes = Vec::new();
        let mut next_decision = *start + DECIDE_EVERY;
        for _ in 0..ms / 20 {
            *start += Duration::from_millis(20);
            for (who, l) in levels {
                d.on_level(&p(who), *l, *start);
            }
            if *start >= next_decision {
                next_decision += DECIDE_EVERY;
                if let Some(c) = d.decide(*start) {
                    changes.push(c.map(|p| p.as_str().to_owned()));
                }
            }
        }
        changes
    }

    #[test]
    fn the_speaker_follows_whoever_talks() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        // The doctor talks (-20 dBov), the patient is quiet (-90 dBov).
        let c = talk(&mut d, &mut t, 2000, &[("doctor", 20), ("patient", 90)]);
        assert_eq!(c, vec![Some("doctor".to_owned())]);
        // Then the patient answers.
        let c = talk(&mut d, &mut t, 2000, &[("doctor", 90), ("patient", 25)]);
        assert_eq!(c, vec![Some("patient".to_owned())]);
        // Silence: nobody.
        let c = talk(&mut d, &mut t, 2000, &[("doctor", 127), ("patient", 127)]);
        assert_eq!(c, vec![None]);
    }

    #[test]
    fn a_short_cough_does_not_take_over() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        talk(&mut d, &mut t, 2000, &[("doctor", 25), ("patient", 100)]);
        assert_eq!(d.current().map(|p| p.as_str()), Some("doctor"));
        // 100 ms of a loud cough from the patient while the doctor keeps talking.
        let c = talk(&mut d, &mut t, 100, &[("doctor", 25), ("patient", 5)]);
        assert!(c.is_empty(), "{c:?}");
        let c = talk(&mut d, &mut t, 1000, &[("doctor", 25), ("patient", 100)]);
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn a_speaker_who_leaves_is_announced_gone() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        talk(&mut d, &mut t, 1000, &[("doctor", 20), ("patient", 127)]);
        assert_eq!(d.current().map(|p| p.as_str()), Some("doctor"));
        d.remove(&p("doctor"));
        let c = talk(&mut d, &mut t, 500, &[("patient", 127)]);
        assert_eq!(c, vec![None]);
    }

    #[test]
    fn someone_who_stops_sending_stops_being_the_speaker() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        talk(&mut d, &mut t, 1000, &[("doctor", 20)]);
        assert!(d.current().is_some());
        // Muted or gone: no packets at all.
        let c = talk(&mut d, &mut t, 1000, &[]);
        assert_eq!(c, vec![None]);
    }
}
