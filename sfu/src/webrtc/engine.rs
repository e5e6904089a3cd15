//! How a peer connection is assembled: the codecs we negotiate, the interceptors, the ICE and
//! DTLS settings for each side.

use std::time::Instant;

use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::{
    SctpMaxMessageSize, SettingEngineBuilder,
};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};

use super::PeerError;
use crate::media::Codec;

/// Packets of each sent video stream kept to answer NACKs. A retransmission helps only
/// within a round trip or two (300 ms to a patient across the world): 128 packets hold over
/// half a second of a 2.5 Mbit/s video, more than a second of a 1.2 Mbit/s one and several
/// of a 300 kbit/s one. The history is most of a node's memory: every payload stays
/// referenced as long as any subscriber's history holds it (with rtc's default, 1024, a
/// participant cost 1.3 MiB; 256 held 112 KiB of decrypted packets and 29 KiB of slots per
/// participant). On the fast path it is the cap: a stream's ring grows to it only as its
/// rate needs (`fast::history`). Must be a power of two (rtc's ring buffer).
pub(super) const NACK_HISTORY: u16 = 128;

/// The largest message either side may send on the SFU's data channels: a roster of poses
/// (at most `spatial::roster::MAX_ROSTER_MESSAGE`), a pose, a vitals reading (256 bytes).
/// rtc keeps a reassembly buffer of this size for every association: the default, 64 KiB,
/// was the second largest thing a participant cost.
const MAX_CHANNEL_MESSAGE: u32 = 16 * 1024;
const _: () = assert!(crate::spatial::roster::MAX_ROSTER_MESSAGE as u32 <= MAX_CHANNEL_MESSAGE);

/// The SRTP profiles we negotiate, in our order of preference: the two our own SRTP
/// (`crate::srtp`) implements, and the two every browser offers.
const SRTP_PROFILES: [SrtpProtectionProfile; 2] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
];

/// Payload types we offer. Answers keep the offerer's numbers; the SFU maps per subscriber.
const PT_OPUS: u8 = 111;
pub const PT_VP8: u8 = 96;
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
    /// DTLS server when answering. With `fast_path`, the RTP it sends and receives goes
    /// through the forwarding fast path (`fast`) once DTLS is up, not through rtc's pipeline.
    Server {
        ufrag: String,
        pwd: String,
        fast_path: bool,
    },
    /// A client (our test and load participants): full ICE, controlling.
    Client,
}

/// Where the send-side bandwidth estimate starts, and its floor and ceiling (bits per second).
/// It starts where a home broadband line sits so that a call opens at a good layer; a
/// weaker line brings it down within a second or two of feedback.
pub const INITIAL_ESTIMATE_BPS: f64 = 1_000_000.0;
const MIN_ESTIMATE_BPS: f64 = 64_000.0;
const MAX_ESTIMATE_BPS: f64 = 20_000_000.0;

/// The SFU's estimator towards one subscriber, reporting into `shared`.
pub(super) fn estimator(shared: &super::feedback::ChainShared) -> super::estimator::SfuEstimator {
    super::estimator::SfuEstimator::new(
        INITIAL_ESTIMATE_BPS,
        MIN_ESTIMATE_BPS,
        MAX_ESTIMATE_BPS,
        shared.bandwidth.queue_delay_ms.clone(),
        shared.bandwidth.delivered_bps.clone(),
    )
}

pub(super) fn build(
    side: &Side,
    now: Instant,
    shared: std::sync::Arc<super::feedback::ChainShared>,
) -> Result<RTCPeerConnection, PeerError> {
    use rtc::interceptor::{
        CongestionControlBuilder, NackGeneratorBuilder, NackResponderBuilder,
        ReceiverReportBuilder, SenderReportBuilder, Slot, TwccSenderBuilder,
    };
    use rtc::peer_connection::configuration::interceptor_registry::{
        configure_simulcast_extension_headers, configure_twcc_receiver_only,
    };
    let mut engine = media_engine()?;
    // rtc's defaults (NACK both ways, sender and receiver reports, the simulcast header
    // extensions, transport-wide feedback for what we receive), but with a NACK history
    // sized by need (see `NACK_HISTORY`).
    for parameter in ["", "pli"] {
        engine.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    configure_simulcast_extension_headers(&mut engine).map_err(PeerError::setup)?;
    let fast_path = matches!(
        side,
        Side::Server {
            fast_path: true,
            ..
        }
    );
    // What we receive: NACKs, transport-wide feedback and receiver reports for it. The fast
    // path does all three itself; it only needs transport-wide feedback negotiated (the
    // interceptor this adds is dropped with the registry it was added to).
    let registry = if fast_path {
        configure_twcc_receiver_only(Registry::new(), &mut engine).map_err(PeerError::setup)?;
        Registry::new()
    } else {
        let registry =
            Registry::new().with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
        configure_twcc_receiver_only(registry, &mut engine)
            .map_err(PeerError::setup)?
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
    };
    if let Side::Server { .. } = side {
        shared.bandwidth.target_bps.store(
            INITIAL_ESTIMATE_BPS as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    // What we send, where rtc sends it: the fast path does all of this itself.
    let registry = match side {
        _ if fast_path => registry,
        _ => {
            let registry = registry
                .with(
                    Slot::NackResponder,
                    NackResponderBuilder::new().with_size(NACK_HISTORY).build(),
                )
                .with(Slot::SenderReport, SenderReportBuilder::new().build())
                // Transport-wide sequence numbers on what we send, so the remote's feedback
                // reports it.
                .with(Slot::TwccSender, TwccSenderBuilder::new().build())
                // Answer NACKs, but never into a storm (see `nack_policy`).
                .with(
                    Slot::Custom(super::nack_filter::SLOT),
                    super::nack_filter::NackFilter::new(shared.clone()),
                );
            // The SFU estimates the bandwidth towards each subscriber (see `estimator`) to
            // choose its layers. No pacer: the SFU forwards what publishers paced already,
            // and the allocator keeps the rate under the estimate by choosing layers, not by
            // queueing packets.
            match side {
                Side::Server { .. } => registry.with(
                    Slot::CongestionControl,
                    CongestionControlBuilder::new(estimator(&shared)).build(),
                ),
                Side::Client => registry,
            }
        }
    };
    let registry = registry.with(
        Slot::Custom(super::feedback::SLOT),
        super::feedback::DeliverFeedback::new(shared),
    );
    let channel_limit = SctpMaxMessageSize::Bounded(MAX_CHANNEL_MESSAGE);
    let settings = match side {
        Side::Server { ufrag, pwd, .. } => SettingEngineBuilder::new()
            .with_srtp_protection_profiles(SRTP_PROFILES.to_vec())
            .with_sctp_max_message_size(channel_limit)
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd.clone())
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .build(),
        Side::Client => SettingEngineBuilder::new()
            .with_srtp_protection_profiles(SRTP_PROFILES.to_vec())
            .with_sctp_max_message_size(channel_limit)
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
