//! The signal processing of a tick: frame FFTs, the per-pair spectral multiply-accumulate,
//! the filter crossfade and the limiter.
//!
//! Each source frame (960 samples) is zero-padded to 1920 and transformed once per tick. An
//! HRIR of at most 961 taps then convolves it linearly (no circular wrap) by a product of
//! spectra, so a listener's mix is the sum over its sources of `gain * X_s * H_dir`, one
//! inverse FFT per ear, and an overlap-add of the second half into the next frame.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use super::hrtf::EarSpectra;
use super::{BINS, FFT_LEN, FRAME, SAMPLE_RATE};

/// Bins up to 20 kHz (25 Hz apart): Opus codes nothing above, so the rest of the spectrum of
/// every decoded source is ~0 and is not worth multiplying.
pub(crate) const ACTIVE_BINS: usize = 20_000 * FFT_LEN / SAMPLE_RATE as usize + 1;

/// A source frame's spectrum, split into real and imaginary parts for vectorised loops.
pub(crate) struct Spectrum {
    pub re: Vec<f32>,
    pub im: Vec<f32>,
    /// Bins that carry signal (a multiple of 8): above them the frame is silent (a
    /// narrowband or wideband Opus stream), so multiplying them would only add zeros.
    pub bins: usize,
}

impl Spectrum {
    pub(crate) fn new() -> Spectrum {
        Spectrum {
            re: vec![0.0; ACTIVE_BINS],
            im: vec![0.0; ACTIVE_BINS],
            bins: ACTIVE_BINS,
        }
    }

    /// Find the signal's bandwidth: the last bin within 100 dB of the strongest.
    fn measure_bins(&mut self) {
        let power = |i: usize| self.re[i] * self.re[i] + self.im[i] * self.im[i];
        let max = (0..ACTIVE_BINS).map(power).fold(0.0f32, f32::max);
        let floor = max * 1e-10;
        let last = (0..ACTIVE_BINS)
            .rev()
            .find(|&i| power(i) > floor)
            .unwrap_or(0);
        self.bins = ((last + 8) & !7).min(ACTIVE_BINS);
    }
}

/// Both ears' accumulated spectra.
pub(crate) struct EarAccumulator {
    pub l_re: Vec<f32>,
    pub l_im: Vec<f32>,
    pub r_re: Vec<f32>,
    pub r_im: Vec<f32>,
}

/// One bin's complex product `x * h` for both ears: (left re, left im, right re, right im).
#[inline(always)]
fn product(a: f32, b: f32, h: &EarSpectra<'_>, i: usize) -> [f32; 4] {
    [
        a * h.left_re[i] - b * h.left_im[i],
        a * h.left_im[i] + b * h.left_re[i],
        a * h.right_re[i] - b * h.right_im[i],
        a * h.right_im[i] + b * h.right_re[i],
    ]
}

/// `acc += gain * x * h` over the first `n` bins.
#[inline(always)]
fn mac_body(acc: &mut EarAccumulator, x: &Spectrum, h: &EarSpectra<'_>, gain: f32, n: usize) {
    // Slicing everything to `n` first lets the compiler drop bounds checks and vectorise.
    let h = EarSpectra {
        left_re: &h.left_re[..n],
        left_im: &h.left_im[..n],
        right_re: &h.right_re[..n],
        right_im: &h.right_im[..n],
    };
    let (xr, xi) = (&x.re[..n], &x.im[..n]);
    let (alr, ali) = (&mut acc.l_re[..n], &mut acc.l_im[..n]);
    let (arr, ari) = (&mut acc.r_re[..n], &mut acc.r_im[..n]);
    for i in 0..n {
        let p = product(xr[i] * gain, xi[i] * gain, &h, i);
        alr[i] += p[0];
        ali[i] += p[1];
        arr[i] += p[2];
        ari[i] += p[3];
    }
}

/// A changed pair in one pass: `main += g_new x h_new` and
/// `diff += x (g_old h_old - g_new h_new)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn mac_changed_body(
    main: &mut EarAccumulator,
    diff: &mut EarAccumulator,
    x: &Spectrum,
    h_new: &EarSpectra<'_>,
    g_new: f32,
    h_old: &EarSpectra<'_>,
    g_old: f32,
    n: usize,
) {
    let hn = EarSpectra {
        left_re: &h_new.left_re[..n],
        left_im: &h_new.left_im[..n],
        right_re: &h_new.right_re[..n],
        right_im: &h_new.right_im[..n],
    };
    let ho = EarSpectra {
        left_re: &h_old.left_re[..n],
        left_im: &h_old.left_im[..n],
        right_re: &h_old.right_re[..n],
        right_im: &h_old.right_im[..n],
    };
    let (xr, xi) = (&x.re[..n], &x.im[..n]);
    let (mlr, mli) = (&mut main.l_re[..n], &mut main.l_im[..n]);
    let (mrr, mri) = (&mut main.r_re[..n], &mut main.r_im[..n]);
    let (dlr, dli) = (&mut diff.l_re[..n], &mut diff.l_im[..n]);
    let (drr, dri) = (&mut diff.r_re[..n], &mut diff.r_im[..n]);
    for i in 0..n {
        let pn = product(xr[i] * g_new, xi[i] * g_new, &hn, i);
        let po = product(xr[i] * g_old, xi[i] * g_old, &ho, i);
        mlr[i] += pn[0];
        mli[i] += pn[1];
        mrr[i] += pn[2];
        mri[i] += pn[3];
        dlr[i] += po[0] - pn[0];
        dli[i] += po[1] - pn[1];
        drr[i] += po[2] - pn[2];
        dri[i] += po[3] - pn[3];
    }
}

// The same loops compiled for AVX2 (8 lanes instead of SSE2's 4), chosen at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mac_avx2(acc: &mut EarAccumulator, x: &Spectrum, h: &EarSpectra<'_>, gain: f32, n: usize) {
    mac_body(acc, x, h, gain, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn mac_changed_avx2(
    main: &mut EarAccumulator,
    diff: &mut EarAccumulator,
    x: &Spectrum,
    h_new: &EarSpectra<'_>,
    g_new: f32,
    h_old: &EarSpectra<'_>,
    g_old: f32,
    n: usize,
) {
    mac_changed_body(main, diff, x, h_new, g_new, h_old, g_old, n)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl EarAccumulator {
    pub(crate) fn new() -> EarAccumulator {
        let z = || vec![0.0; ACTIVE_BINS];
        EarAccumulator {
            l_re: z(),
            l_im: z(),
            r_re: z(),
            r_im: z(),
        }
    }

    pub(crate) fn clear(&mut self) {
        for v in [
            &mut self.l_re,
            &mut self.l_im,
            &mut self.r_re,
            &mut self.r_im,
        ] {
            v.fill(0.0);
        }
    }

    /// `self += gain * x * h`, for both ears: the hot loop of the mixer.
    pub(crate) fn mac(&mut self, x: &Spectrum, h: &EarSpectra<'_>, gain: f32) {
        let n = x.bins.min(ACTIVE_BINS);
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { mac_avx2(self, x, h, gain, n) };
            return;
        }
        mac_body(self, x, h, gain, n)
    }

    /// A pair whose filter or gain changed: `self += g_new x h_new` and
    /// `diff += x (g_old h_old - g_new h_new)` (the part to fade out), in one pass.
    pub(crate) fn mac_changed(
        &mut self,
        diff: &mut EarAccumulator,
        x: &Spectrum,
        (h_new, g_new): (&EarSpectra<'_>, f32),
        (h_old, g_old): (&EarSpectra<'_>, f32),
    ) {
        let n = x.bins.min(ACTIVE_BINS);
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { mac_changed_avx2(self, diff, x, h_new, g_new, h_old, g_old, n) };
            return;
        }
        mac_changed_body(self, diff, x, h_new, g_new, h_old, g_old, n)
    }
}

/// FFT plans and buffers, shared by all listeners of a mixer (they are rendered one by one).
pub(crate) struct Fft {
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
    time: Vec<f32>,
    freq: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl Fft {
    pub(crate) fn new() -> Fft {
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(FFT_LEN);
        let inverse = planner.plan_fft_inverse(FFT_LEN);
        let scratch_len = forward.get_scratch_len().max(inverse.get_scratch_len());
        Fft {
            forward,
            inverse,
            time: vec![0.0; FFT_LEN],
            freq: vec![Complex::new(0.0, 0.0); BINS],
            scratch: vec![Complex::new(0.0, 0.0); scratch_len],
        }
    }

    /// Spectrum of one zero-padded frame.
    pub(crate) fn forward(&mut self, frame: &[f32], out: &mut Spectrum) {
        let n = frame.len().min(FRAME);
        self.time[..n].copy_from_slice(&frame[..n]);
        self.time[n..].fill(0.0);
        // Lengths are fixed at construction, so the FFT cannot fail; stay silent if it does.
        if self
            .forward
            .process_with_scratch(&mut self.time, &mut self.freq, &mut self.scratch)
            .is_err()
        {
            out.re.fill(0.0);
            out.im.fill(0.0);
            out.bins = 0;
            return;
        }
        for ((c, re), im) in self.freq.iter().zip(&mut out.re).zip(&mut out.im) {
            *re = c.re;
            *im = c.im;
        }
        out.measure_bins();
    }

    /// Time signal (FFT_LEN samples) of one ear's accumulated spectrum.
    pub(crate) fn inverse(&mut self, re: &[f32], im: &[f32]) -> &[f32] {
        for (i, c) in self.freq.iter_mut().enumerate() {
            *c = match (re.get(i), im.get(i)) {
                (Some(&r), Some(&m)) => Complex::new(r, m),
                _ => Complex::new(0.0, 0.0),
            };
        }
        // A real signal's DC and Nyquist bins are real; realfft insists.
        self.freq[0].im = 0.0;
        self.freq[BINS - 1].im = 0.0;
        if self
            .inverse
            .process_with_scratch(&mut self.freq, &mut self.time, &mut self.scratch)
            .is_err()
        {
            self.time.fill(0.0);
        }
        &self.time
    }
}

/// Raised-cosine fade-in over one frame; the fade-out is `1 - w`.
pub(crate) fn crossfade_window() -> Vec<f32> {
    (0..FRAME)
        .map(|i| 0.5 - 0.5 * (std::f32::consts::PI * (i as f32 + 0.5) / FRAME as f32).cos())
        .collect()
}

/// A stereo-linked look-ahead peak limiter. The output is delayed by 1 ms; the gain at each
/// sample is the minimum of the gains required over the next millisecond, averaged over the
/// last millisecond. So no sample exceeds the ceiling, yet the gain moves only in ramps of at
/// least 1 ms (no hard clipping); it then releases exponentially.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    ceiling: f32,
    release: f32,
    gain: f32,
    /// The previous frame's last `ATTACK` samples, then this frame (left, right).
    buf_l: Vec<f32>,
    buf_r: Vec<f32>,
    /// Required gain per sample of `buf_*`.
    required: Vec<f32>,
    /// Minimum of the required gains over the look-ahead, per output sample.
    hold: Vec<f32>,
    /// The previous frame's last `ATTACK` minima, for the running average.
    history: Vec<f32>,
    window: std::collections::VecDeque<usize>,
}

impl Limiter {
    /// Look-ahead, delay and ramp length (1 ms).
    const ATTACK: usize = 48;

    pub(crate) fn new(ceiling_dbfs: f32, release_ms: f32) -> Limiter {
        let release_samples = (release_ms.max(1.0) * 1e-3 * SAMPLE_RATE as f32).max(1.0);
        let a = Self::ATTACK;
        Limiter {
            ceiling: 10f32.powf(ceiling_dbfs / 20.0),
            // Per-sample coefficient: the remaining gain reduction shrinks by 1/e per release time.
            release: (-1.0 / release_samples).exp(),
            gain: 1.0,
            buf_l: vec![0.0; FRAME + a],
            buf_r: vec![0.0; FRAME + a],
            required: vec![1.0; FRAME + a],
            hold: vec![1.0; FRAME],
            history: vec![1.0; a],
            window: std::collections::VecDeque::with_capacity(a + 2),
        }
    }

    #[cfg(test)]
    pub(crate) fn gain(&self) -> f32 {
        self.gain
    }

    /// Limit a frame (at most [`FRAME`] samples) of left and right in place.
    pub(crate) fn process(&mut self, left: &mut [f32], right: &mut [f32]) {
        let a = Self::ATTACK;
        let n = left.len().min(right.len()).min(FRAME);
        let Limiter {
            ceiling,
            release,
            gain,
            buf_l,
            buf_r,
            required,
            hold,
            history,
            window,
        } = self;
        // Shift the delay line: the last `a` samples move to the front, this frame follows.
        buf_l.copy_within(FRAME..FRAME + a, 0);
        buf_r.copy_within(FRAME..FRAME + a, 0);
        buf_l[a..a + n].copy_from_slice(&left[..n]);
        buf_r[a..a + n].copy_from_slice(&right[..n]);
        buf_l[a + n..].fill(0.0);
        buf_r[a + n..].fill(0.0);
        let peak = buf_l
            .iter()
            .chain(buf_r.iter())
            .fold(0.0f32, |m, v| m.max(v.abs()));
        let idle = *gain >= 1.0 && history.iter().all(|h| *h >= 1.0);
        if peak <= *ceiling && idle {
            // The common case: only the delay.
            left[..n].copy_from_slice(&buf_l[..n]);
            right[..n].copy_from_slice(&buf_r[..n]);
            return;
        }
        for ((r, l), rt) in required.iter_mut().zip(buf_l.iter()).zip(buf_r.iter()) {
            let p = l.abs().max(rt.abs());
            // NaN (never expected) is silenced rather than passed on.
            *r = if p > *ceiling {
                *ceiling / p
            } else if p.is_nan() {
                0.0
            } else {
                1.0
            };
        }
        // Sliding minimum over [i, i + a], walking backwards with a monotone deque of indices
        // (increasing required gains: the front is the window's minimum).
        window.clear();
        for i in (0..FRAME + a).rev() {
            let r = required[i];
            while window.back().is_some_and(|&j| required[j] >= r) {
                window.pop_back();
            }
            window.push_back(i);
            while window.front().is_some_and(|&j| j > i + a) {
                window.pop_front();
            }
            if i < FRAME {
                hold[i] = window.front().map_or(r, |&j| required[j]);
            }
        }
        // Running average of the last `a` minima (each of whose windows covers sample i, so
        // the average never exceeds the gain sample i requires), then the release.
        let mut sum: f32 = history.iter().sum();
        let mut g = *gain;
        for i in 0..n {
            let oldest = if i >= a { hold[i - a] } else { history[i] };
            sum += hold[i] - oldest;
            let avg = (sum / a as f32).min(1.0);
            g = (1.0 - (1.0 - g) * *release).min(avg).min(required[i]);
            left[i] = buf_l[i] * g;
            right[i] = buf_r[i] * g;
        }
        history.copy_from_slice(&hold[FRAME - a..FRAME]);
        *gain = g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convolution_by_spectra_matches_direct_convolution() {
        let mut fft = Fft::new();
        // Content well below 20 kHz, so the bins the mixer skips hold only leakage.
        let x: Vec<f32> = (0..FRAME)
            .map(|i| (i as f32 * 0.05).sin() + 0.5 * (i as f32 * 0.31).sin())
            .collect();
        let h: Vec<f32> = (0..300)
            .map(|i| if i % 50 == 3 { 0.5 } else { 0.0 })
            .collect();
        let mut xs = Spectrum::new();
        fft.forward(&x, &mut xs);
        let mut hs = Spectrum::new();
        fft.forward(&h, &mut hs);
        let scale = 1.0 / FFT_LEN as f32;
        let (hre, him): (Vec<f32>, Vec<f32>) = (
            hs.re.iter().map(|v| v * scale).collect(),
            hs.im.iter().map(|v| v * scale).collect(),
        );
        let ears = EarSpectra {
            left_re: &hre,
            left_im: &him,
            right_re: &hre,
            right_im: &him,
        };
        let mut acc = EarAccumulator::new();
        acc.mac(&xs, &ears, 1.0);
        let y = fft.inverse(&acc.l_re, &acc.l_im).to_vec();
        let mut direct = vec![0.0f32; FFT_LEN];
        for (i, xv) in x.iter().enumerate() {
            for (j, hv) in h.iter().enumerate() {
                direct[i + j] += xv * hv;
            }
        }
        let err: f32 = y
            .iter()
            .zip(&direct)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>();
        let energy: f32 = direct.iter().map(|v| v * v).sum();
        assert!(err / energy < 1e-4, "relative error {}", err / energy);
    }

    #[test]
    fn limiter_holds_the_ceiling_and_leaves_quiet_frames_alone() {
        let mut lim = Limiter::new(-1.0, 80.0);
        let ceiling = 10f32.powf(-1.0 / 20.0);
        let mut l: Vec<f32> = (0..FRAME).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        let mut r = l.clone();
        let orig = l.clone();
        lim.process(&mut l, &mut r);
        // Quiet: only delayed by 1 ms.
        assert_eq!(&l[Limiter::ATTACK..], &orig[..FRAME - Limiter::ATTACK]);
        assert!(l[..Limiter::ATTACK].iter().all(|v| *v == 0.0));
        let mut prev_gain = 1.0;
        for _ in 0..5 {
            let mut l: Vec<f32> = (0..FRAME).map(|i| 3.0 * (i as f32 * 0.05).sin()).collect();
            let mut r = l.clone();
            lim.process(&mut l, &mut r);
            assert!(l.iter().chain(&r).all(|v| v.abs() <= ceiling * 1.0001));
            // No hard clipping: the peaks of the sine stay rounded, not flattened.
            let at_ceiling = l.iter().filter(|v| v.abs() > ceiling * 0.999).count();
            assert!(at_ceiling < 40, "{at_ceiling} samples at the ceiling");
            prev_gain = lim.gain();
        }
        assert!(prev_gain < 0.4);
        // Quiet again: the gain recovers.
        for _ in 0..50 {
            let mut l = orig.clone();
            let mut r = orig.clone();
            lim.process(&mut l, &mut r);
        }
        assert!(lim.gain() > 0.95, "gain {}", lim.gain());
    }
}
