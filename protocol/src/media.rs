//! Media kinds and the codecs the SFU negotiates and forwards, as both services and the
//! control API name them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// The codecs the SFU negotiates and forwards. It never transcodes in a consultation room, so
/// a subscriber only gets a track whose codec it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Opus,
    Vp8,
    H264,
}

impl Codec {
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            Codec::Vp8 | Codec::H264 => MediaKind::Video,
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::Vp8 | Codec::H264 => 90_000,
        }
    }

    /// The MIME type as SDP and the WebRTC library spell it.
    pub fn mime_type(self) -> &'static str {
        match self {
            Codec::Opus => "audio/opus",
            Codec::Vp8 => "video/VP8",
            Codec::H264 => "video/H264",
        }
    }

    pub fn from_mime_type(mime: &str) -> Option<Codec> {
        [Codec::Opus, Codec::Vp8, Codec::H264]
            .into_iter()
            .find(|c| c.mime_type().eq_ignore_ascii_case(mime))
    }
}
