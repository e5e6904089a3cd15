//! The spatial mixer's settings, in typed units (metres, dBFS, milliseconds, frames).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SpatialError;

/// Settings of the spatial audio mixer of shared rooms. Every key has a default; unknown keys
/// are refused so a typo cannot silently fall back to a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpatialConfig {
    /// The SOFA file with the head-related impulse responses (MIT KEMAR, normal pinna).
    /// Defaults to the copy in the source tree; set it in deployed images.
    pub hrtf_path: PathBuf,
    /// K: the most sources a listener hears at once, chosen by loudness over distance.
    pub max_sources_per_listener: usize,
    /// The most participants one mixer accepts (each costs a decoder and an encoder).
    pub max_participants: usize,
    /// Distance (m) at and below which a source is heard at full level.
    pub ref_distance_m: f32,
    /// Rolloff of the inverse-distance law: gain = ref / (ref + rolloff * (d - ref)).
    /// 1.0 is the physical law (-6 dB per doubling of distance).
    pub rolloff: f32,
    /// Distance (m) beyond which the gain stops decreasing (the law is clamped).
    pub max_distance_m: f32,
    /// Distance (m) beyond which a source is not heard at all.
    pub hearing_range_m: f32,
    /// Frames quieter than this (dBFS RMS, or dBov from the RFC 6464 audio level) are treated
    /// as silence: not rendered, and packets so marked are not even decoded.
    pub silence_threshold_dbfs: f32,
    /// Jitter buffer depth (20 ms frames) to collect before a talk spurt starts playing.
    pub jitter_target_frames: u32,
    /// Missing frames concealed (Opus PLC) before a source is treated as having stopped.
    pub max_concealed_frames: u32,
    /// Limiter ceiling (dBFS) of each listener's mix.
    pub limiter_threshold_dbfs: f32,
    /// Time (ms) for the limiter's gain to recover to unity after a peak.
    pub limiter_release_ms: f32,
    /// Bit rate of each listener's Opus stereo stream (bits per second).
    pub opus_bitrate_bps: u32,
    /// Opus encoder complexity, 0..=10. One encoder per listener is most of the cost of a
    /// tick, so the default is low; see `mixer::new_encoder` for the measurements.
    pub opus_complexity: u8,
    /// Radius (m) of the circle on which participants without a pose are placed, facing its
    /// centre (see [`super::pose::default_pose`]).
    pub default_ring_radius_m: f32,
    /// Workers that mix shared rooms' listeners in parallel, one pool for the whole node.
    /// 0: one per core the media threads leave (at least one).
    pub mixer_threads: usize,
}

impl Default for SpatialConfig {
    fn default() -> Self {
        SpatialConfig {
            hrtf_path: super::hrtf::bundled_sofa_path(),
            max_sources_per_listener: 16,
            max_participants: 512,
            ref_distance_m: 1.0,
            rolloff: 1.0,
            max_distance_m: 20.0,
            hearing_range_m: 25.0,
            silence_threshold_dbfs: -60.0,
            jitter_target_frames: 2,
            max_concealed_frames: 5,
            limiter_threshold_dbfs: -1.0,
            limiter_release_ms: 80.0,
            opus_bitrate_bps: 64_000,
            opus_complexity: 0,
            default_ring_radius_m: 2.0,
            mixer_threads: 0,
        }
    }
}

impl SpatialConfig {
    /// Refuse settings that would make the mixer misbehave rather than clamp them silently.
    pub fn validate(&self) -> Result<(), SpatialError> {
        let bad = |what: &'static str| Err(SpatialError::Config(what));
        let finite_pos = |v: f32| v.is_finite() && v > 0.0;
        if self.mixer_threads > 256 {
            return bad("mixer_threads must be at most 256");
        }
        if !(1..=64).contains(&self.max_sources_per_listener) {
            return bad("max_sources_per_listener must be in 1..=64");
        }
        if self.max_participants == 0 || self.max_participants > 4096 {
            return bad("max_participants must be in 1..=4096");
        }
        if !finite_pos(self.ref_distance_m) {
            return bad("ref_distance_m must be > 0");
        }
        if !(self.rolloff.is_finite() && self.rolloff >= 0.0) {
            return bad("rolloff must be >= 0");
        }
        if !(finite_pos(self.max_distance_m) && self.max_distance_m >= self.ref_distance_m) {
            return bad("max_distance_m must be >= ref_distance_m");
        }
        if !finite_pos(self.hearing_range_m) {
            return bad("hearing_range_m must be > 0");
        }
        if !(self.silence_threshold_dbfs.is_finite() && self.silence_threshold_dbfs <= 0.0) {
            return bad("silence_threshold_dbfs must be <= 0");
        }
        if !(1..=20).contains(&self.jitter_target_frames) {
            return bad("jitter_target_frames must be in 1..=20");
        }
        if self.max_concealed_frames > 50 {
            return bad("max_concealed_frames must be <= 50");
        }
        if !(self.limiter_threshold_dbfs.is_finite()
            && (-30.0..=0.0).contains(&self.limiter_threshold_dbfs))
        {
            return bad("limiter_threshold_dbfs must be in -30..=0");
        }
        if !(self.limiter_release_ms.is_finite()
            && (1.0..=5000.0).contains(&self.limiter_release_ms))
        {
            return bad("limiter_release_ms must be in 1..=5000");
        }
        if !(6_000..=510_000).contains(&self.opus_bitrate_bps) {
            return bad("opus_bitrate_bps must be in 6000..=510000");
        }
        if self.opus_complexity > 10 {
            return bad("opus_complexity must be in 0..=10");
        }
        if !(self.default_ring_radius_m.is_finite() && self.default_ring_radius_m >= 0.0) {
            return bad("default_ring_radius_m must be >= 0");
        }
        Ok(())
    }

    /// Gain of a source at `distance_m` from the listener: the clamped inverse-distance law,
    /// and 0 beyond the hearing range (or for a non-finite distance).
    pub fn distance_gain(&self, distance_m: f32) -> f32 {
        if !(distance_m.is_finite() && distance_m <= self.hearing_range_m) {
            return 0.0;
        }
        let d = distance_m.clamp(self.ref_distance_m, self.max_distance_m);
        self.ref_distance_m / (self.ref_distance_m + self.rolloff * (d - self.ref_distance_m))
    }

    /// The silence threshold as a linear RMS amplitude.
    pub(crate) fn silence_rms(&self) -> f32 {
        10f32.powf(self.silence_threshold_dbfs / 20.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_refused() {
        SpatialConfig::default().validate().expect("defaults valid");
        let parsed: SpatialConfig =
            serde_json::from_str(r#"{"max_sources_per_listener": 8, "rolloff": 2.0}"#)
                .expect("partial config parses");
        assert_eq!(parsed.max_sources_per_listener, 8);
        assert_eq!(
            parsed.hearing_range_m,
            SpatialConfig::default().hearing_range_m
        );
        assert!(serde_json::from_str::<SpatialConfig>(r#"{"max_sources": 8}"#).is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        let d = SpatialConfig::default;
        for bad in [
            SpatialConfig {
                max_sources_per_listener: 0,
                ..d()
            },
            SpatialConfig {
                ref_distance_m: f32::NAN,
                ..d()
            },
            SpatialConfig {
                hearing_range_m: -1.0,
                ..d()
            },
            SpatialConfig {
                max_distance_m: 0.5,
                ..d()
            },
            SpatialConfig {
                opus_complexity: 11,
                ..d()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn distance_law_halves_per_doubling_and_stops_at_hearing_range() {
        let c = SpatialConfig::default();
        assert_eq!(c.distance_gain(0.2), 1.0);
        assert!((c.distance_gain(2.0) - 0.5).abs() < 1e-6);
        assert!((c.distance_gain(4.0) - 0.25).abs() < 1e-6);
        assert_eq!(c.distance_gain(24.0), c.distance_gain(20.0));
        assert_eq!(c.distance_gain(25.5), 0.0);
        assert_eq!(c.distance_gain(f32::NAN), 0.0);
    }
}
