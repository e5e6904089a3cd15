//! `SpatialMixer`: the per-room engine. Per tick it decodes each audible source once, picks
//! for each listener the K sources that matter, renders them binaurally, limits, and encodes
//! one Opus stereo frame per listener.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use super::config::SpatialConfig;
use super::dsp::{Limiter, Spectrum, crossfade_window};
use super::hrtf::HrtfSet;
use super::jitter::JitterStats;
use super::pose::{Pose, default_pose};
use super::render::{Audible, ListenerState, Scratch, Shared, SourceFrame};
use super::source::{AudioPacket, SourceDecoder};
use super::{FRAME, SAMPLE_RATE, SpatialError};

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

/// The spatial audio engine of one shared room. `P` is the caller's participant key.
pub struct SpatialMixer<P> {
    config: SpatialConfig,
    hrtf: Arc<HrtfSet>,
    slots: Vec<Option<Participant<P>>>,
    frames: Vec<SourceFrame>,
    by_id: HashMap<P, usize>,
    joined: u64,
    fade_in: Vec<f32>,
    audible: Vec<Audible>,
    /// Buffers of each worker that mixes listeners (one without a pool).
    scratch: Vec<Scratch>,
    /// Where listeners are mixed in parallel; `None`: on the caller's thread.
    pool: Option<Arc<rayon::ThreadPool>>,
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

impl<P: Copy + Eq + Hash + Send> SpatialMixer<P> {
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
            fade_in: crossfade_window(),
            audible: Vec::new(),
            scratch: vec![Scratch::new()],
            pool: None,
            stats: MixerStats::default(),
            crossfade: true,
        })
    }

    /// Mix listeners on `pool`'s workers (the media thread only waits for them). The
    /// output is the same as without a pool, sample for sample.
    pub fn with_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
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
        self.run_tick(true)
    }

    /// Render one 20 ms tick without encoding: each listener's PCM is then in [`Self::pcm`].
    pub fn render(&mut self) {
        self.run_tick(false);
    }

    /// Decoding and mixing, inside one visit to the pool: the caller's thread waits once per
    /// tick, and the workers stay awake from one phase to the next.
    fn run_tick(&mut self, encode: bool) -> Vec<MixedFrame<P>> {
        self.stats.ticks += 1;
        let phases = |m: &mut Self| {
            m.decode_sources();
            m.mix_listeners(encode)
        };
        match self.pool.clone() {
            Some(pool) => pool.install(|| phases(self)),
            None => phases(self),
        }
    }

    /// Pull one frame from every source; transform the audible ones. Sources are decoded
    /// on the mixer pool too, in chunks; `audible` keeps slot order either way.
    fn decode_sources(&mut self) {
        let SpatialMixer {
            config,
            slots,
            frames,
            audible,
            scratch,
            stats,
            pool,
            ..
        } = self;
        let silence = config.silence_rms();
        let decode_chunk = |first: usize,
                            slots: &mut [Option<Participant<P>>],
                            frames: &mut [SourceFrame],
                            s: &mut Scratch| {
            let mut out = Vec::new();
            for (i, (p, f)) in slots.iter_mut().zip(frames.iter_mut()).enumerate() {
                f.was_audible = f.audible;
                f.audible = false;
                let Some(p) = p else { continue };
                let Some(decoder) = p.decoder.as_mut() else {
                    continue;
                };
                if let Some(loudness) = s.decode(decoder, !p.muted, silence, &mut f.spectrum) {
                    f.audible = true;
                    out.push(Audible {
                        slot: first + i,
                        generation: p.generation,
                        position: p.pose().position,
                        loudness,
                    });
                }
            }
            out
        };
        audible.clear();
        match pool {
            Some(pool) if slots.len() > 1 => {
                use rayon::prelude::*;
                let chunk = chunk_len(slots.len(), pool, scratch);
                let parts: Vec<Vec<Audible>> = pool.install(|| {
                    slots
                        .par_chunks_mut(chunk)
                        .zip(frames.par_chunks_mut(chunk))
                        .zip(scratch.par_iter_mut())
                        .enumerate()
                        .map(|(c, ((slots, frames), s))| decode_chunk(c * chunk, slots, frames, s))
                        .collect()
                });
                audible.extend(parts.into_iter().flatten());
            }
            _ => audible.extend(decode_chunk(0, slots, frames, &mut scratch[0])),
        }
        stats.audible_sources += audible.len() as u64;
    }

    /// Every listener's share of the tick, encoded too when `encode`; on the mixer pool
    /// when there is one, one chunk of listeners per worker.
    fn mix_listeners(&mut self, encode: bool) -> Vec<MixedFrame<P>> {
        let SpatialMixer {
            config,
            hrtf,
            slots,
            frames,
            fade_in,
            audible,
            scratch,
            stats,
            crossfade,
            pool,
            ..
        } = self;
        let shared = Shared {
            config,
            hrtf,
            frames,
            audible,
            fade_in,
            crossfade,
        };
        let mix_chunk = |first: usize, chunk: &mut [Option<Participant<P>>], s: &mut Scratch| {
            let mut out = Vec::new();
            for (i, p) in chunk.iter_mut().enumerate() {
                let Some(p) = p else { continue };
                let pose = p.pose();
                let Some(l) = p.listener.as_deref_mut() else {
                    continue;
                };
                s.render(&shared, first + i, pose, l);
                if encode && let Some(payload) = s.encode(l) {
                    out.push(MixedFrame {
                        listener: p.id,
                        payload,
                    });
                }
            }
            out
        };
        let frames_out = match pool {
            Some(pool) if slots.len() > 1 => {
                use rayon::prelude::*;
                let chunk = chunk_len(slots.len(), pool, scratch);
                let parts: Vec<Vec<MixedFrame<P>>> = pool.install(|| {
                    slots
                        .par_chunks_mut(chunk)
                        .zip(scratch.par_iter_mut())
                        .enumerate()
                        .map(|(c, (slots, s))| mix_chunk(c * chunk, slots, s))
                        .collect()
                });
                parts.into_iter().flatten().collect()
            }
            _ => mix_chunk(0, slots, &mut scratch[0]),
        };
        for s in scratch.iter_mut() {
            let part = std::mem::take(&mut s.stats);
            stats.rendered_pairs += part.rendered_pairs;
            stats.crossfades += part.crossfades;
            stats.encode_errors += part.encode_errors;
        }
        frames_out
    }

    /// Disable crossfades, to show that the click test detects their absence.
    #[cfg(test)]
    pub(crate) fn set_crossfade(&mut self, on: bool) {
        self.crossfade = on;
    }
}

/// How many slots each worker of `pool` takes, with a scratch ready for each.
fn chunk_len(slots: usize, pool: &rayon::ThreadPool, scratch: &mut Vec<Scratch>) -> usize {
    let workers = pool.current_num_threads().max(1);
    if scratch.len() < workers {
        scratch.resize_with(workers, Scratch::new);
    }
    slots.div_ceil(workers)
}
