//! `SpatialMixer`: the per-room engine. Per tick it decodes each audible source once, picks
//! for each listener the K sources that matter, renders them binaurally, limits, and encodes
//! one Opus stereo frame per listener.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use super::config::SpatialConfig;
use super::dsp::{EarAccumulator, Fft, Limiter, Spectrum, crossfade_window};
use super::hrtf::{DirIndex, HrtfSet};
use super::jitter::JitterStats;
use super::pose::{Pose, default_pose};
use super::source::{AudioPacket, SourceDecoder};
use super::{FRAME, SAMPLE_RATE, SpatialError};

/// The largest Opus packet we produce (RFC 6716 caps a frame at 1275 bytes).
const MAX_ENCODED: usize = 1275;
/// Gain changes smaller than this fraction (~0.17 dB, below what anyone hears) keep the
/// current filter: walking avatars then cost a crossfade only every few ticks.
const GAIN_TOLERANCE: f32 = 0.02;

/// What a participant does in the room's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Talks and hears (the usual avatar).
    SpeakerListener,
    /// Hears only (an observer): no decoder.
    ListenerOnly,
    /// Talks only (e.g. a recorded announcement): no encoder.
    SpeakerOnly,
}

impl Role {
    fn speaks(self) -> bool {
        !matches!(self, Role::ListenerOnly)
    }
    fn listens(self) -> bool {
        !matches!(self, Role::SpeakerOnly)
    }
}

/// One listener's encoded frame for this tick: the caller packetizes it (RTP timestamp
/// advancing by 960 per tick, 48 kHz stereo Opus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedFrame<P> {
    pub listener: P,
    pub payload: Vec<u8>,
}

/// Counters of a mixer, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MixerStats {
    pub ticks: u64,
    /// Source frames decoded (or concealed) and transformed.
    pub audible_sources: u64,
    /// (source, listener) pairs rendered.
    pub rendered_pairs: u64,
    /// Pairs whose filter or gain changed, rendered with a crossfade.
    pub crossfades: u64,
    pub encode_errors: u64,
}

struct Participant<P> {
    id: P,
    generation: u64,
    muted: bool,
    pose: Option<Pose>,
    default_pose: Pose,
    decoder: Option<SourceDecoder>,
    listener: Option<Box<ListenerState>>,
}

impl<P> Participant<P> {
    fn pose(&self) -> Pose {
        self.pose.unwrap_or(self.default_pose)
    }
}

/// A source's frame of this tick, kept per slot.
struct SourceFrame {
    generation: u64,
    audible: bool,
    was_audible: bool,
    spectrum: Spectrum,
}

/// An audible source of this tick, as the listeners' selection sees it.
#[derive(Clone, Copy)]
struct Audible {
    slot: usize,
    generation: u64,
    position: [f32; 3],
    loudness: f32,
}

/// A (source, listener) pair as rendered: the filter and gain in use.
#[derive(Clone, Copy)]
struct Pair {
    slot: usize,
    generation: u64,
    dir: DirIndex,
    gain: f32,
}

#[derive(Clone, Copy)]
struct Candidate {
    audible: usize,
    gain: f32,
    score: f32,
}

struct ListenerState {
    pairs: Vec<Pair>,
    next_pairs: Vec<Pair>,
    tail_l: Vec<f32>,
    tail_r: Vec<f32>,
    out_l: Vec<f32>,
    out_r: Vec<f32>,
    /// Interleaved stereo PCM of the last rendered frame.
    pcm: Vec<f32>,
    limiter: Limiter,
    encoder: opus::Encoder,
}

/// The spatial audio engine of one shared room. `P` is the caller's participant key.
pub struct SpatialMixer<P> {
    config: SpatialConfig,
    hrtf: Arc<HrtfSet>,
    slots: Vec<Option<Participant<P>>>,
    frames: Vec<SourceFrame>,
    by_id: HashMap<P, usize>,
    joined: u64,
    fft: Fft,
    fade_in: Vec<f32>,
    main: EarAccumulator,
    diff: EarAccumulator,
    frame: Vec<f32>,
    audible: Vec<Audible>,
    candidates: Vec<Candidate>,
    encoded: Vec<u8>,
    stats: MixerStats,
    crossfade: bool,
}

/// An encoder for one listener's stream.
///
/// Measured on this project's 2-core machine (20 ms stereo frames): complexity 10 costs
/// 210-240 µs per frame, the VoIP application stays above 150 µs even at complexity 0 (SILK
/// and signal analysis), while the restricted-low-delay application (CELT only) at complexity
/// 0 costs 65-90 µs at 48-64 kb/s. One encode per listener per tick is about half of a tick's
/// cost, so: CELT only (also 2.5 ms less algorithmic delay), complexity 0 by default, and
/// 64 kb/s so CELT keeps the binaural stereo image (it falls back to intensity stereo for more
/// bands at lower rates).
fn new_encoder(config: &SpatialConfig) -> Result<opus::Encoder, SpatialError> {
    let codec = |e: opus::Error| SpatialError::Codec(format!("opus encoder: {e}"));
    let mut enc = opus::Encoder::new(
        SAMPLE_RATE,
        opus::Channels::Stereo,
        opus::Application::LowDelay,
    )
    .map_err(codec)?;
    enc.set_bitrate(opus::Bitrate::Bits(config.opus_bitrate_bps as i32))
        .map_err(codec)?;
    enc.set_complexity(i32::from(config.opus_complexity))
        .map_err(codec)?;
    Ok(enc)
}

impl<P: Copy + Eq + Hash> SpatialMixer<P> {
    /// A mixer with no participants. `hrtf` is loaded once per process and shared.
    pub fn new(config: SpatialConfig, hrtf: Arc<HrtfSet>) -> Result<Self, SpatialError> {
        config.validate()?;
        Ok(SpatialMixer {
            config,
            hrtf,
            slots: Vec::new(),
            frames: Vec::new(),
            by_id: HashMap::new(),
            joined: 0,
            fft: Fft::new(),
            fade_in: crossfade_window(),
            main: EarAccumulator::new(),
            diff: EarAccumulator::new(),
            frame: vec![0.0; FRAME],
            audible: Vec::new(),
            candidates: Vec::new(),
            encoded: vec![0; MAX_ENCODED],
            stats: MixerStats::default(),
            crossfade: true,
        })
    }

    pub fn config(&self) -> &SpatialConfig {
        &self.config
    }

    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: P) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Add a participant. Until it sends a pose it stands at its default place (see
    /// [`default_pose`]).
    pub fn add_participant(&mut self, id: P, role: Role) -> Result<(), SpatialError> {
        if self.by_id.contains_key(&id) {
            return Err(SpatialError::AlreadyPresent);
        }
        if self.by_id.len() >= self.config.max_participants {
            return Err(SpatialError::Full);
        }
        let c = &self.config;
        let decoder = if role.speaks() {
            Some(SourceDecoder::new(
                c.jitter_target_frames,
                c.max_concealed_frames,
                c.silence_threshold_dbfs,
            )?)
        } else {
            None
        };
        let listener = if role.listens() {
            Some(Box::new(ListenerState {
                pairs: Vec::with_capacity(c.max_sources_per_listener),
                next_pairs: Vec::with_capacity(c.max_sources_per_listener),
                tail_l: vec![0.0; FRAME],
                tail_r: vec![0.0; FRAME],
                out_l: vec![0.0; FRAME],
                out_r: vec![0.0; FRAME],
                pcm: vec![0.0; 2 * FRAME],
                limiter: Limiter::new(c.limiter_threshold_dbfs, c.limiter_release_ms),
                encoder: new_encoder(c)?,
            }))
        } else {
            None
        };
        let generation = self.joined;
        self.joined += 1;
        let participant = Participant {
            id,
            generation,
            muted: false,
            pose: None,
            default_pose: default_pose(generation, c.default_ring_radius_m),
            decoder,
            listener,
        };
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.slots.push(None);
                self.frames.push(SourceFrame {
                    generation: u64::MAX,
                    audible: false,
                    was_audible: false,
                    spectrum: Spectrum::new(),
                });
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(participant);
        let frame = &mut self.frames[slot];
        frame.generation = generation;
        frame.audible = false;
        frame.was_audible = false;
        self.by_id.insert(id, slot);
        Ok(())
    }

    /// Remove a participant; returns whether it was there.
    pub fn remove_participant(&mut self, id: P) -> bool {
        let Some(slot) = self.by_id.remove(&id) else {
            return false;
        };
        self.slots[slot] = None;
        self.frames[slot].audible = false;
        self.frames[slot].generation = u64::MAX;
        true
    }

    fn participant_mut(&mut self, id: P) -> Result<&mut Participant<P>, SpatialError> {
        let slot = *self
            .by_id
            .get(&id)
            .ok_or(SpatialError::UnknownParticipant)?;
        self.slots[slot]
            .as_mut()
            .ok_or(SpatialError::UnknownParticipant)
    }

    /// The participant's latest pose (replaces the previous one).
    pub fn set_pose(&mut self, id: P, pose: Pose) -> Result<(), SpatialError> {
        self.participant_mut(id)?.pose = Some(pose);
        Ok(())
    }

    /// Parse a data-channel pose message and apply it. A refused message leaves the
    /// previous pose in place.
    pub fn set_pose_bytes(&mut self, id: P, bytes: &[u8]) -> Result<(), SpatialError> {
        let pose = Pose::decode(bytes)?;
        self.set_pose(id, pose)
    }

    /// Back to the default placement.
    pub fn clear_pose(&mut self, id: P) -> Result<(), SpatialError> {
        self.participant_mut(id)?.pose = None;
        Ok(())
    }

    /// The pose in use for a participant (its own, or its default placement).
    pub fn pose(&self, id: P) -> Option<Pose> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot].as_ref().map(Participant::pose)
    }

    /// A muted participant is in nobody's mix (its packets are consumed, not decoded).
    pub fn set_muted(&mut self, id: P, muted: bool) -> Result<(), SpatialError> {
        self.participant_mut(id)?.muted = muted;
        Ok(())
    }

    /// Queue one RTP packet of a participant's Opus stream.
    pub fn push_packet(&mut self, id: P, packet: AudioPacket<'_>) -> Result<(), SpatialError> {
        let p = self.participant_mut(id)?;
        let decoder = p.decoder.as_mut().ok_or(SpatialError::NotASource)?;
        decoder.push(packet).map_err(SpatialError::Dropped)
    }

    /// Jitter-buffer counters of a participant's stream.
    pub fn source_stats(&self, id: P) -> Option<JitterStats> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot]
            .as_ref()?
            .decoder
            .as_ref()
            .map(SourceDecoder::jitter_stats)
    }

    /// The last rendered frame for a listener: interleaved stereo (L, R), 960 frames.
    pub fn pcm(&self, id: P) -> Option<&[f32]> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot]
            .as_ref()?
            .listener
            .as_deref()
            .map(|l| l.pcm.as_slice())
    }

    /// Render one 20 ms tick and encode one Opus stereo frame per listener.
    pub fn tick(&mut self) -> Vec<MixedFrame<P>> {
        self.render();
        let mut out = Vec::with_capacity(self.slots.len());
        for p in self.slots.iter_mut().flatten() {
            let Some(l) = p.listener.as_deref_mut() else {
                continue;
            };
            match l.encoder.encode_float(&l.pcm, &mut self.encoded) {
                Ok(n) => out.push(MixedFrame {
                    listener: p.id,
                    payload: self.encoded[..n].to_vec(),
                }),
                Err(_) => self.stats.encode_errors += 1,
            }
        }
        out
    }

    /// Render one 20 ms tick without encoding: each listener's PCM is then in [`Self::pcm`].
    pub fn render(&mut self) {
        self.stats.ticks += 1;
        self.decode_sources();
        self.render_listeners();
    }

    /// Pull one frame from every source; transform the audible ones.
    fn decode_sources(&mut self) {
        let silence = self.config.silence_rms();
        self.audible.clear();
        for (slot, p) in self.slots.iter_mut().enumerate() {
            let f = &mut self.frames[slot];
            f.was_audible = f.audible;
            f.audible = false;
            let Some(p) = p else { continue };
            let Some(decoder) = p.decoder.as_mut() else {
                continue;
            };
            if !decoder.next_frame(&mut self.frame, !p.muted) {
                continue;
            }
            let rms = (self.frame.iter().map(|v| v * v).sum::<f32>() / FRAME as f32).sqrt();
            // Quiet frames (and NaN, which a decoder should never produce) are skipped.
            if rms.is_nan() || rms < silence || !rms.is_finite() {
                continue;
            }
            self.fft.forward(&self.frame, &mut f.spectrum);
            f.audible = true;
            self.stats.audible_sources += 1;
            self.audible.push(Audible {
                slot,
                generation: p.generation,
                position: p.pose().position,
                loudness: rms,
            });
        }
    }

    fn render_listeners(&mut self) {
        let SpatialMixer {
            config,
            hrtf,
            slots,
            frames,
            fft,
            fade_in,
            main,
            diff,
            audible,
            candidates,
            stats,
            crossfade,
            ..
        } = self;
        let k = config.max_sources_per_listener;
        for (my_slot, p) in slots.iter_mut().enumerate() {
            let Some(p) = p else { continue };
            let pose = p.pose();
            let Some(l) = p.listener.as_deref_mut() else {
                continue;
            };

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

    /// Disable crossfades, to show that the click test detects their absence.
    #[cfg(test)]
    pub(crate) fn set_crossfade(&mut self, on: bool) {
        self.crossfade = on;
    }
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}
