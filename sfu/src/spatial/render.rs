//! A mixer worker's share of a tick: decoding and transforming sources, and for each
//! listener, choosing the sources that matter, rendering them through the HRTF of their
//! direction (with crossfades where a filter or gain changed), overlap-add, limiting and
//! encoding. A source's work touches only that source, a listener's reads only the tick's
//! shared spectra and writes only that listener's state: any worker can do any of it, in
//! any order, and the result is the same, sample for sample.

use std::sync::Arc;

use super::FRAME;
use super::config::SpatialConfig;
use super::dsp::{EarAccumulator, Fft, Limiter, Spectrum};
use super::hrtf::{DirIndex, HrtfSet};
use super::mixer::MixerStats;
use super::pose::Pose;
use super::source::SourceDecoder;

/// The largest Opus packet we produce (RFC 6716 caps a frame at 1275 bytes).
const MAX_ENCODED: usize = 1275;
/// Gain changes smaller than this fraction (~0.17 dB, below what anyone hears) keep the
/// current filter: walking avatars then cost a crossfade only every few ticks.
const GAIN_TOLERANCE: f32 = 0.02;

/// A source's frame of this tick, kept per slot.
pub(super) struct SourceFrame {
    pub generation: u64,
    pub audible: bool,
    pub was_audible: bool,
    pub spectrum: Spectrum,
}

/// An audible source of this tick, as the listeners' selection sees it.
#[derive(Clone, Copy)]
pub(super) struct Audible {
    pub slot: usize,
    pub generation: u64,
    pub position: [f32; 3],
    pub loudness: f32,
}

/// A (source, listener) pair as rendered: the filter and gain in use.
#[derive(Clone, Copy)]
pub(super) struct Pair {
    slot: usize,
    generation: u64,
    dir: DirIndex,
    gain: f32,
}

#[derive(Clone, Copy)]
pub(super) struct Candidate {
    audible: usize,
    gain: f32,
    score: f32,
}

pub(super) struct ListenerState {
    pub pairs: Vec<Pair>,
    pub next_pairs: Vec<Pair>,
    pub tail_l: Vec<f32>,
    pub tail_r: Vec<f32>,
    pub out_l: Vec<f32>,
    pub out_r: Vec<f32>,
    /// Interleaved stereo PCM of the last rendered frame.
    pub pcm: Vec<f32>,
    pub limiter: Limiter,
    pub encoder: opus::Encoder,
}

/// What every listener of a tick reads.
pub(super) struct Shared<'a> {
    pub config: &'a SpatialConfig,
    pub hrtf: &'a Arc<HrtfSet>,
    pub frames: &'a [SourceFrame],
    pub audible: &'a [Audible],
    pub fade_in: &'a [f32],
    pub crossfade: &'a bool,
}

/// One worker's buffers, reused from tick to tick, and its share of the counters.
pub(super) struct Scratch {
    fft: Fft,
    /// One decoded source frame.
    frame: Vec<f32>,
    main: EarAccumulator,
    diff: EarAccumulator,
    candidates: Vec<Candidate>,
    encoded: Vec<u8>,
    pub stats: MixerStats,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            fft: Fft::new(),
            frame: vec![0.0; FRAME],
            main: EarAccumulator::new(),
            diff: EarAccumulator::new(),
            candidates: Vec::new(),
            encoded: vec![0; MAX_ENCODED],
            stats: MixerStats::default(),
        }
    }

    /// Decode the source's next frame (consume it only, when `decode` is false: muted) and
    /// transform it into `spectrum`; its loudness (RMS) if it is audible at all.
    pub fn decode(
        &mut self,
        decoder: &mut SourceDecoder,
        decode: bool,
        silence: f32,
        spectrum: &mut Spectrum,
    ) -> Option<f32> {
        if !decoder.next_frame(&mut self.frame, decode) {
            return None;
        }
        let rms = (self.frame.iter().map(|v| v * v).sum::<f32>() / FRAME as f32).sqrt();
        // Quiet frames (and NaN, which a decoder should never produce) are skipped.
        if rms.is_nan() || rms < silence || !rms.is_finite() {
            return None;
        }
        self.fft.forward(&self.frame, spectrum);
        Some(rms)
    }

    /// Encode the listener's last rendered frame.
    pub fn encode(&mut self, l: &mut ListenerState) -> Option<Vec<u8>> {
        match l.encoder.encode_float(&l.pcm, &mut self.encoded) {
            Ok(n) => Some(self.encoded[..n].to_vec()),
            Err(_) => {
                self.stats.encode_errors += 1;
                None
            }
        }
    }

    /// Render one tick for the listener in `my_slot`, standing at `pose`.
    pub fn render(&mut self, sh: &Shared<'_>, my_slot: usize, pose: Pose, l: &mut ListenerState) {
        let Shared {
            config,
            hrtf,
            frames,
            audible,
            fade_in,
            crossfade,
        } = *sh;
        let Scratch {
            fft,
            main,
            diff,
            candidates,
            stats,
            ..
        } = self;
        let k = config.max_sources_per_listener;
        // Pick the K loudest over distance; never oneself (muted sources are not audible).
        candidates.clear();
        for (i, a) in audible.iter().enumerate() {
            if a.slot == my_slot {
                continue;
            }
            let gain = config.distance_gain(distance(pose.position, a.position));
            if gain > 0.0 {
                candidates.push(Candidate {
                    audible: i,
                    gain,
                    score: a.loudness * gain,
                });
            }
        }
        if candidates.len() > k {
            // Ties go to the earlier slot so the choice is stable from tick to tick.
            candidates.select_nth_unstable_by(k - 1, |a, b| {
                b.score.total_cmp(&a.score).then(a.audible.cmp(&b.audible))
            });
            candidates.truncate(k);
        }

        main.clear();
        let mut any_diff = false;
        l.next_pairs.clear();
        for c in candidates.iter() {
            let a = audible[c.audible];
            let x = &frames[a.slot].spectrum;
            let d = pose.direction_to(a.position);
            let dir = hrtf.nearest(d.azimuth_deg, d.elevation_deg);
            let old = l
                .pairs
                .iter()
                .find(|o| o.slot == a.slot && o.generation == a.generation);
            let new = Pair {
                slot: a.slot,
                generation: a.generation,
                dir,
                gain: c.gain,
            };
            let pair = match old {
                Some(o)
                    if o.dir == dir
                        && (o.gain - c.gain).abs() <= GAIN_TOLERANCE * o.gain.max(c.gain) =>
                {
                    main.mac(x, &hrtf.spectrum(o.dir), o.gain);
                    *o
                }
                Some(o) if *crossfade => {
                    // Changed: the new filter, plus the old-minus-new part faded out.
                    if !any_diff {
                        diff.clear();
                        any_diff = true;
                    }
                    let (h_new, h_old) = (hrtf.spectrum(dir), hrtf.spectrum(o.dir));
                    main.mac_changed(diff, x, (&h_new, c.gain), (&h_old, o.gain));
                    stats.crossfades += 1;
                    new
                }
                None if *crossfade && frames[a.slot].was_audible => {
                    // Audible already but culled (or out of range) until now: fade in.
                    if !any_diff {
                        diff.clear();
                        any_diff = true;
                    }
                    let h = hrtf.spectrum(dir);
                    main.mac_changed(diff, x, (&h, c.gain), (&h, 0.0));
                    stats.crossfades += 1;
                    new
                }
                _ => {
                    // New after silence: nothing was playing, so no step to smooth.
                    main.mac(x, &hrtf.spectrum(dir), c.gain);
                    new
                }
            };
            l.next_pairs.push(pair);
            stats.rendered_pairs += 1;
        }
        // Sources still talking but no longer selected fade out.
        if *crossfade {
            for o in l.pairs.iter() {
                let f = &frames[o.slot];
                let kept = l
                    .next_pairs
                    .iter()
                    .any(|n| n.slot == o.slot && n.generation == o.generation);
                if kept || !f.audible || f.generation != o.generation {
                    continue;
                }
                if !any_diff {
                    diff.clear();
                    any_diff = true;
                }
                diff.mac(&f.spectrum, &hrtf.spectrum(o.dir), o.gain);
                stats.crossfades += 1;
            }
        }
        std::mem::swap(&mut l.pairs, &mut l.next_pairs);

        let silent = l.pairs.is_empty() && !any_diff;
        let ListenerState {
            tail_l,
            tail_r,
            out_l,
            out_r,
            pcm,
            limiter,
            ..
        } = l;
        if silent {
            // Nothing new: only the previous frame's tail rings out.
            out_l.copy_from_slice(tail_l);
            out_r.copy_from_slice(tail_r);
            tail_l.fill(0.0);
            tail_r.fill(0.0);
        } else {
            for (re, im, out, tail) in [
                (&main.l_re, &main.l_im, &mut *out_l, &mut *tail_l),
                (&main.r_re, &main.r_im, &mut *out_r, &mut *tail_r),
            ] {
                let y = fft.inverse(re, im);
                for ((o, t), v) in out.iter_mut().zip(tail.iter()).zip(&y[..FRAME]) {
                    *o = v + t;
                }
                tail.copy_from_slice(&y[FRAME..]);
            }
            if any_diff {
                for (re, im, out) in [
                    (&diff.l_re, &diff.l_im, &mut *out_l),
                    (&diff.r_re, &diff.r_im, &mut *out_r),
                ] {
                    let y = fft.inverse(re, im);
                    for ((o, w), v) in out.iter_mut().zip(fade_in.iter()).zip(&y[..FRAME]) {
                        *o += (1.0 - w) * v;
                    }
                }
            }
        }
        limiter.process(out_l, out_r);
        for ((frame, lv), rv) in pcm.chunks_exact_mut(2).zip(out_l.iter()).zip(out_r.iter()) {
            frame[0] = *lv;
            frame[1] = *rv;
        }
    }
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}
