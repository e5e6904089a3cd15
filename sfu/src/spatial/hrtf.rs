//! Head-related transfer functions: the MIT KEMAR set, loaded once, resampled to 48 kHz, and
//! kept as spectra on a fixed grid of directions so the per-pair work of a tick is only a
//! multiply-accumulate of spectra (see `render`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use realfft::RealFftPlanner;

use super::{BINS, FFT_LEN, FRAME, SAMPLE_RATE, SpatialError};

/// The longest impulse response whose linear convolution with one frame fits in the FFT.
const MAX_TAPS: usize = FFT_LEN - FRAME + 1;
/// Elevations of the grid's rings (degrees): those of the KEMAR measurements.
const LOWEST_ELEVATION_DEG: f32 = -40.0;
const ELEVATION_STEP_DEG: f32 = 10.0;
const RINGS: usize = 14; // -40, -30, ..., +90
/// Spacing of grid directions along a ring, in degrees of arc (5° at the horizon, as measured).
const ARC_STEP_DEG: f32 = 5.0;
/// Per direction: left re, left im, right re, right im.
const PER_DIRECTION: usize = 4 * BINS;

/// Path of the bundled SOFA file in the source tree (for tests, benches and development).
pub fn bundled_sofa_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hrtf/MIT_KEMAR_normal_pinna.sofa")
}

/// Index of a grid direction of an [`HrtfSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirIndex(u32);

/// One ear pair's filter spectrum (split real/imaginary, scaled by 1/FFT_LEN).
pub(crate) struct EarSpectra<'a> {
    pub left_re: &'a [f32],
    pub left_im: &'a [f32],
    pub right_re: &'a [f32],
    pub right_im: &'a [f32],
}

#[derive(Debug, Clone, Copy)]
struct Ring {
    count: u32,
    first: u32,
}

/// HRTF spectra on a grid of directions, shared by every mixer of the process.
pub struct HrtfSet {
    rings: [Ring; RINGS],
    spectra: Vec<f32>,
    taps: usize,
}

impl std::fmt::Debug for HrtfSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HrtfSet")
            .field("directions", &self.directions())
            .field("taps", &self.taps)
            .finish()
    }
}

impl HrtfSet {
    /// Load a SOFA file (resampled to 48 kHz if needed) and prepare the filter grid.
    pub fn load(path: &Path) -> Result<Arc<HrtfSet>, SpatialError> {
        let bytes = std::fs::read(path)
            .map_err(|e| SpatialError::Hrtf(format!("cannot read {}: {e}", path.display())))?;
        HrtfSet::from_sofa_bytes(&bytes)
    }

    /// The bundled MIT KEMAR set (see [`bundled_sofa_path`]).
    pub fn load_bundled() -> Result<Arc<HrtfSet>, SpatialError> {
        HrtfSet::load(&bundled_sofa_path())
    }

    /// Parse SOFA bytes and prepare the filter grid.
    pub fn from_sofa_bytes(bytes: &[u8]) -> Result<Arc<HrtfSet>, SpatialError> {
        // sofar resamples with rubato when the file's rate differs (KEMAR is 44.1 kHz), and
        // normalises so that the frontal filter has unit energy per ear.
        let sofa = sofar::reader::OpenOptions::new()
            .sample_rate(SAMPLE_RATE as f32)
            .open_data(bytes)
            .map_err(|e| SpatialError::Hrtf(format!("cannot parse SOFA data: {e}")))?;
        let taps = sofa.filter_len();
        if taps == 0 {
            return Err(SpatialError::Hrtf("SOFA data has empty filters".into()));
        }
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FFT_LEN);
        let mut time = vec![0.0f32; FFT_LEN];
        let mut freq = fft.make_output_vec();
        let mut scratch = fft.make_scratch_vec();
        let mut filter = sofar::reader::Filter::new(taps);

        let mut rings = [Ring { count: 0, first: 0 }; RINGS];
        let mut spectra = Vec::new();
        let mut first = 0u32;
        for (i, ring) in rings.iter_mut().enumerate() {
            let el = (LOWEST_ELEVATION_DEG + ELEVATION_STEP_DEG * i as f32).to_radians();
            let count = ((360.0 * el.cos() / ARC_STEP_DEG).round() as u32).max(1);
            *ring = Ring { count, first };
            first += count;
            for k in 0..count {
                let az = (360.0 * k as f32 / count as f32).to_radians();
                // SOFA's frame: +x ahead, +y left, +z up.
                let (x, y, z) = (el.cos() * az.cos(), el.cos() * az.sin(), el.sin());
                sofa.filter(x, y, z, &mut filter);
                for (ir, delay_s) in [
                    (&filter.left, filter.ldelay),
                    (&filter.right, filter.rdelay),
                ] {
                    // A broadband delay (zero for KEMAR, whose IRs carry the ITD) becomes a shift.
                    let shift = (delay_s.max(0.0) * SAMPLE_RATE as f32).round() as usize;
                    time.fill(0.0);
                    let n = ir.len().min(MAX_TAPS.saturating_sub(shift));
                    if shift < MAX_TAPS {
                        time[shift..shift + n].copy_from_slice(&ir[..n]);
                    }
                    fft.process_with_scratch(&mut time, &mut freq, &mut scratch)
                        .map_err(|e| SpatialError::Hrtf(format!("FFT failed: {e}")))?;
                    // Both FFTs are unnormalised: fold the 1/N into the filter once.
                    let norm = 1.0 / FFT_LEN as f32;
                    spectra.extend(freq.iter().map(|c| c.re * norm));
                    spectra.extend(freq.iter().map(|c| c.im * norm));
                }
            }
        }
        let set = HrtfSet {
            rings,
            spectra,
            taps,
        };
        // A lookup that failed everywhere yields zero filters: refuse such a file.
        let front = set.spectrum(set.nearest(0.0, 0.0));
        let energy: f32 = front
            .left_re
            .iter()
            .chain(front.left_im)
            .map(|v| v * v)
            .sum();
        if !(energy > 0.0 && energy.is_finite()) {
            return Err(SpatialError::Hrtf(
                "SOFA data has no usable frontal filter".into(),
            ));
        }
        Ok(Arc::new(set))
    }

    /// Number of grid directions.
    pub fn directions(&self) -> usize {
        self.spectra.len() / PER_DIRECTION
    }

    /// Taps of the impulse responses at 48 kHz.
    pub fn taps(&self) -> usize {
        self.taps
    }

    /// The grid direction nearest to (azimuth, elevation) in degrees, SOFA convention
    /// (azimuth counter-clockwise from ahead, elevation up). Elevations below the lowest
    /// measured ring (-40°) use that ring. Non-finite angles map to straight ahead.
    pub fn nearest(&self, azimuth_deg: f32, elevation_deg: f32) -> DirIndex {
        let el = if elevation_deg.is_finite() {
            elevation_deg
        } else {
            0.0
        };
        let az = if azimuth_deg.is_finite() {
            azimuth_deg
        } else {
            0.0
        };
        let ring_f = ((el - LOWEST_ELEVATION_DEG) / ELEVATION_STEP_DEG).round();
        let ring = self.rings[(ring_f.max(0.0) as usize).min(RINGS - 1)];
        let turns = (az / 360.0).rem_euclid(1.0);
        let k = ((turns * ring.count as f32).round() as u32) % ring.count;
        DirIndex(ring.first + k)
    }

    pub(crate) fn spectrum(&self, dir: DirIndex) -> EarSpectra<'_> {
        // DirIndex values only come from `nearest`, so the range is in bounds; fall back to
        // the first direction rather than panic if that ever changes.
        let start = dir.0 as usize * PER_DIRECTION;
        let s = self
            .spectra
            .get(start..start + PER_DIRECTION)
            .unwrap_or(&self.spectra[..PER_DIRECTION]);
        let (left, right) = s.split_at(2 * BINS);
        let (left_re, left_im) = left.split_at(BINS);
        let (right_re, right_im) = right.split_at(BINS);
        EarSpectra {
            left_re,
            left_im,
            right_re,
            right_im,
        }
    }
}

#[cfg(test)]
pub(crate) fn shared_for_tests() -> Arc<HrtfSet> {
    use std::sync::OnceLock;
    static SET: OnceLock<Arc<HrtfSet>> = OnceLock::new();
    SET.get_or_init(|| HrtfSet::load_bundled().expect("bundled SOFA file loads"))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_bundled_kemar_set_at_48_khz() {
        let set = shared_for_tests();
        // 44.1 kHz, 512 taps in the file: about 558 taps once resampled to 48 kHz.
        assert!((550..=570).contains(&set.taps()), "taps {}", set.taps());
        assert!(set.directions() > 600, "{set:?}");
    }

    #[test]
    fn grid_lookup_wraps_and_clamps() {
        let set = shared_for_tests();
        assert_eq!(set.nearest(0.0, 0.0), set.nearest(360.0, 0.0));
        assert_eq!(set.nearest(-90.0, 0.0), set.nearest(270.0, 0.0));
        assert_ne!(set.nearest(90.0, 0.0), set.nearest(-90.0, 0.0));
        assert_eq!(set.nearest(10.0, -89.0), set.nearest(10.0, -40.0));
        assert_eq!(set.nearest(0.0, 90.0), set.nearest(123.0, 88.0));
        assert_eq!(set.nearest(f32::NAN, f32::INFINITY), set.nearest(0.0, 0.0));
        assert!((set.nearest(1e30, -1e30).0 as usize) < set.directions());
    }

    #[test]
    fn corrupt_sofa_data_is_an_error() {
        assert!(HrtfSet::from_sofa_bytes(b"not a sofa file").is_err());
        assert!(HrtfSet::load(Path::new("/nonexistent/file.sofa")).is_err());
    }
}
