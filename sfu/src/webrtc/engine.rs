//! How a peer connection is assembled: the codecs we negotiate, the interceptors, the ICE and
//! DTLS settings for each side.

use std::time::Instant;

use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};

use super::PeerError;
use crate::media::Codec;

/// Payload types we offer. Answers keep the offerer's numbers; the SFU maps per subscriber.
const PT_OPUS: u8 = 111;
const PT_VP8: u8 = 96;
const PT_H264: u8 = 102;

/// The H.264 flavour every browser can decode: constrained baseline, non-interleaved.
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
/// Stereo is allowed both ways: shared rooms send each listener a binaural mix.
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1";

fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    })
    .collect()
}

/// The codec description the WebRTC library uses for one of ours.
pub(super) fn rtp_codec(codec: Codec) -> RTCRtpCodec {
    match codec {
        Codec::Opus => RTCRtpCodec {
            mime_type: codec.mime_type().to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: OPUS_FMTP.to_owned(),
            rtcp_feedback: vec![],
        },
        Codec::Vp8 => RTCRtpCodec {
            mime_type: codec.mime_type().to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: video_feedback(),
        },
        Codec::H264 => RTCRtpCodec {
            mime_type: codec.mime_type().to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: H264_FMTP.to_owned(),
            rtcp_feedback: video_feedback(),
        },
    }
}

fn media_engine() -> Result<MediaEngine, PeerError> {
    let mut engine = MediaEngine::default();
    for (codec, pt) in [
        (Codec::Opus, PT_OPUS),
        (Codec::Vp8, PT_VP8),
        (Codec::H264, PT_H264),
    ] {
        let kind = match codec.kind() {
            crate::media::MediaKind::Audio => RtpCodecKind::Audio,
            crate::media::MediaKind::Video => RtpCodecKind::Video,
        };
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: rtp_codec(codec),
                    payload_type: pt,
                },
                kind,
            )
            .map_err(PeerError::setup)?;
    }
    // The audio level in every audio packet: the SFU finds the dominant speaker without
    // decoding anyone.
    engine
        .register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: super::AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )
        .map_err(PeerError::setup)?;
    Ok(engine)
}

/// Which side of the call a peer connection is on.
#[derive(Debug, Clone)]
pub enum Side {
    /// The SFU: ICE-lite with credentials we chose (they key the shared-port demultiplexer),
    /// DTLS server when answering.
    Server { ufrag: String, pwd: String },
    /// A client (our test and load participants): full ICE, controlling.
    Client,
}

pub(super) fn build(side: &Side, now: Instant) -> Result<RTCPeerConnection, PeerError> {
    let mut engine = media_engine()?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)
        .map_err(PeerError::setup)?
        .with(
            rtc::interceptor::Slot::Custom(super::feedback::SLOT),
            super::feedback::DeliverFeedback::default(),
        );
    let settings = match side {
        Side::Server { ufrag, pwd } => SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd.clone())
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .build(),
        Side::Client => SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build(),
    };
    RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(vec![])
                .build(),
        )
        .with_media_engine(engine)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(PeerError::setup)
}
