//! Media the client library sends and checks: Opus tones and speech-like talk, synthetic VP8,
//! send-time markers.

pub mod audio;
pub(crate) mod freeze;
pub mod h264;
pub mod marker;
pub mod speech;
pub mod vp8;
mod vp8_tables;
