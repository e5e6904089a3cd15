//! What a participant is asked to be: what it publishes, how its link behaves.

use std::time::Duration;

use metaclinic_sfu::media::Codec;

use crate::netem::LinkSpec;

/// What a participant publishes.
#[derive(Debug, Clone, Default)]
pub struct PublishSpec {
    pub audio: Option<AudioSpec>,
    pub video: Option<VideoSpec>,
}

#[derive(Debug, Clone)]
pub struct AudioSpec {
    pub hz: u32,
    pub level_dbfs: f64,
    /// Talk spurts and pauses (sent with DTX) instead of a steady tone.
    pub speech: bool,
}

#[derive(Debug, Clone)]
pub struct VideoSpec {
    /// VP8 (decodable) or H.264 (structure only, see `media::h264`).
    pub codec: Codec,
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    pub kbps: u32,
    /// A keyframe at least this often (also on request).
    pub keyframe_interval: Duration,
    /// Send three simulcast layers (VP8 only), as a browser does: quarter, half and full
    /// size at about a tenth, a third and all of `kbps`.
    pub simulcast: bool,
}

impl Default for VideoSpec {
    fn default() -> Self {
        VideoSpec {
            codec: Codec::Vp8,
            width: 640,
            height: 360,
            fps: 30,
            kbps: 500,
            keyframe_interval: Duration::from_secs(3),
            simulcast: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ParticipantSpec {
    pub name: String,
    pub publish: PublishSpec,
    /// Decode received Opus (for checks); costs ~40 us per frame, so load runs may turn it off.
    pub decode_audio: bool,
    /// Open a data channel (avatar poses in shared rooms).
    pub data_channel: bool,
    /// A bad network between this participant and the SFU, each way (None: loopback as is).
    pub uplink: Option<LinkSpec>,
    pub downlink: Option<LinkSpec>,
    /// The participant's network blocks UDP: it reaches the SFU over ICE-TCP only.
    pub tcp_only: bool,
    /// The local address its socket binds to (and its host candidate names): loopback for
    /// a server on this machine, the routed interface's address for one elsewhere.
    pub bind_ip: std::net::IpAddr,
    /// How long it takes to answer the SFU's offers (a slow phone, a slow link to
    /// signaling): the answer goes this long after the offer arrived.
    pub answer_delay: Duration,
    /// Consultations: open the `vitals` data channel, with a simulated device or to receive.
    pub vitals: Option<super::VitalsSpec>,
    /// Relay-only (`iceTransportPolicy: "relay"`): all media through this TURN allocation;
    /// its relayed address is the only candidate.
    pub relay: Option<crate::relay::RelaySpec>,
    /// Through signaling: relay-only through the first TURN server of `joined`'s
    /// `ice_servers` reachable over this transport (CA certificates, PEM, to trust for TLS).
    pub relay_via: Option<(crate::relay::RelayTransport, Option<Vec<u8>>)>,
}

impl ParticipantSpec {
    pub fn new(name: &str) -> Self {
        ParticipantSpec {
            name: name.to_owned(),
            publish: PublishSpec::default(),
            decode_audio: true,
            data_channel: false,
            uplink: None,
            downlink: None,
            tcp_only: false,
            bind_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            answer_delay: Duration::ZERO,
            vitals: None,
            relay: None,
            relay_via: None,
        }
    }

    /// Send through `up` and receive through `down`.
    pub fn with_links(mut self, up: Option<LinkSpec>, down: Option<LinkSpec>) -> Self {
        self.uplink = up;
        self.downlink = down;
        self
    }

    pub fn with_tone(mut self, hz: u32) -> Self {
        self.publish.audio = Some(AudioSpec {
            hz,
            level_dbfs: -12.0,
            speech: false,
        });
        self
    }

    /// Speak (talk spurts and pauses, with DTX) with a voice at `hz`, from a random point of
    /// the talk pattern so that participants do not talk in step.
    pub fn with_speech(mut self, hz: u32) -> Self {
        self.publish.audio = Some(AudioSpec {
            hz,
            level_dbfs: -12.0,
            speech: true,
        });
        self
    }

    pub fn with_video(mut self, video: VideoSpec) -> Self {
        self.publish.video = Some(video);
        self
    }
}
