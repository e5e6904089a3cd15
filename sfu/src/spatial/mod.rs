//! Spatial audio for shared rooms: every listener hears each nearby avatar from where it
//! stands, as one binaural Opus stereo stream mixed for them on the server.
//!
//! Per 20 ms tick ([`SpatialMixer::tick`]):
//! 1. each source's [`jitter`] buffer yields one frame, decoded once (Opus PLC/FEC on loss;
//!    silent, DTX and muted frames are not decoded) and transformed once (FFT);
//! 2. per listener, the K sources loudest-over-distance within the hearing range are chosen
//!    ([`SpatialConfig`]), and each is filtered by the KEMAR head-related transfer function
//!    of its direction in the listener's head frame ([`pose`], [`hrtf`]): a multiply-add of
//!    spectra, with a one-frame crossfade whenever a pair's filter or gain changes;
//! 3. one inverse FFT per ear, overlap-add, a limiter, one Opus stereo encode.
//!
//! The module is sans-I/O and free of WebRTC-library types: the SFU feeds RTP payloads and
//! poses in, calls `tick` every 20 ms, and packetizes what comes out.

pub mod config;
mod dsp;
pub mod hrtf;
pub mod jitter;
mod mixer;
pub mod pose;
mod render;
pub mod roster;
mod source;

#[cfg(test)]
mod tests;

pub use config::SpatialConfig;
pub use hrtf::{HrtfSet, bundled_sofa_path};
pub use jitter::{DropReason, JitterStats};
pub use mixer::{MixedFrame, MixerStats, Role, SpatialMixer};
pub use pose::{Direction, Pose, PoseError, Quat, default_pose};
pub use roster::{RosterEntry, decode_roster, encode_roster};
pub use source::AudioPacket;

/// The mixer's sample rate (Hz): Opus's native rate.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples per channel in one tick (20 ms).
pub const FRAME: usize = 960;
/// FFT length: a frame plus room for the HRIR's tail, so convolution does not wrap.
const FFT_LEN: usize = 2 * FRAME;
/// Bins of a real FFT of `FFT_LEN`.
const BINS: usize = FFT_LEN / 2 + 1;

/// Errors of the spatial mixer. Bad input is an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum SpatialError {
    #[error("invalid spatial audio config: {0}")]
    Config(&'static str),
    #[error("HRTF data: {0}")]
    Hrtf(String),
    #[error("codec: {0}")]
    Codec(String),
    #[error("participant already in the mixer")]
    AlreadyPresent,
    #[error("mixer is full")]
    Full,
    #[error("unknown participant")]
    UnknownParticipant,
    #[error("participant does not send audio")]
    NotASource,
    #[error("packet dropped: {0:?}")]
    Dropped(DropReason),
    #[error(transparent)]
    Pose(#[from] PoseError),
}
