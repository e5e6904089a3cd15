//! The one module that knows the WebRTC library (webrtc-rs `rtc`, sans-I/O). Everything else
//! sees [`Peer`]: datagrams and timeouts in, our own [`PeerOutput`]s and datagrams out.
//!
//! The same wrapper serves both sides of a call: the SFU's end of a participant's connection
//! (ICE-lite, fixed credentials, one shared UDP port) and the client library's participants
//! (full ICE, controlling), so tests and load runs exercise exactly this stack.
//!
//! Here: the types, the connection and its I/O. Beside it: `negotiation` (offers,
//! answers, what a description declares), `sending` (our tracks, RTP and keyframe
//! requests on them), `output` (what the library says, as [`PeerOutput`]s), `stats`
//! (counters, round trip, loss); the chain's own interceptors (`nack_filter`,
//! `feedback`, `estimator`) and how a connection is assembled (`engine`).

mod delivered;
mod dtls_replay;
mod engine;
mod estimator;
mod fast;
mod fast_path;
mod feedback;
mod nack_filter;
mod nack_policy;
mod negotiation;
mod output;
mod sending;
mod simulcast;
mod srtp_keys;
mod stats;
pub mod stun;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use dtls_replay::FlightReplay;
pub use engine::{H264_FMTP, PT_VP8, Side};
use negotiation::{AUDIO_LEVEL_URI, extmap_id, read_sdp};
pub use stats::LinkCounters;

use crate::media::{Codec, Feedback, MediaKind, RtpPacket};

/// Errors from the WebRTC layer, split by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The remote side sent something we cannot use (bad SDP, wrong state for it).
    #[error("{0}")]
    Rejected(String),
    /// Building or driving the connection failed on our side.
    #[error("webrtc setup: {0}")]
    Setup(String),
}

impl PeerError {
    fn setup(e: impl std::fmt::Display) -> Self {
        PeerError::Setup(e.to_string())
    }
    fn rejected(e: impl std::fmt::Display) -> Self {
        PeerError::Rejected(e.to_string())
    }
}

/// A track the remote side sends us, numbered by this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundId(pub u32);

/// A track we send to the remote side, numbered by this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboundId(pub u32);

/// A data channel of this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId(pub usize);

/// Connection state, as far as rooms care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// What a peer hands back to its driver.
#[derive(Debug)]
pub enum PeerOutput {
    State(ConnectionState),
    /// The first packet of a remote track arrived; its codec is known.
    TrackOpened {
        inbound: InboundId,
        codec: Codec,
        stream_id: String,
        track_id: String,
    },
    TrackClosed {
        inbound: InboundId,
    },
    Rtp {
        inbound: InboundId,
        /// The simulcast layer (RID) it belongs to, by the remote's `a=simulcast` order; 0
        /// for a track without simulcast.
        layer: u8,
        packet: RtpPacket,
    },
    /// RTP on a track whose codec we do not forward (or do not know).
    UnroutableRtp,
    Feedback {
        outbound: OutboundId,
        feedback: Feedback,
    },
    ChannelOpened {
        channel: ChannelId,
        label: String,
    },
    ChannelClosed {
        channel: ChannelId,
    },
    ChannelMessage {
        channel: ChannelId,
        data: Bytes,
        text: bool,
    },
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: BytesMut,
    /// Goes over the ICE-TCP connection with `to` (RFC 4571 framing), not UDP.
    pub tcp: bool,
}

struct Inbound {
    id: InboundId,
    receiver: RTCRtpReceiverId,
    /// The media section's mid, which names its simulcast layers.
    mid: Option<String>,
    /// Each layer's SSRC and index (one entry, layer 0, without simulcast).
    layers: Vec<(u32, u8)>,
    stream_id: String,
    /// Payload type to codec, learned per payload type from the receiver's parameters.
    codecs: Vec<(u8, Option<Codec>)>,
    announced: bool,
}

struct Outbound {
    sender: RTCRtpSenderId,
    /// One SSRC per encoding: several for a simulcast track, each with its RID.
    ssrcs: Vec<u32>,
    rids: Vec<String>,
    /// The media section's mid, written into simulcast packets with their RID.
    mid: Option<Bytes>,
    codec: Codec,
    stream_id: String,
    track_id: String,
    /// The sender's track names its codec (see `name_outbound_codecs`).
    codec_named: bool,
    /// The payload type the remote accepted for `codec`; known once an answer covers it.
    payload_type: Option<u8>,
}

/// One WebRTC peer connection.
pub struct Peer {
    pc: RTCPeerConnection,
    side: Side,
    /// The address our host candidate announces; datagrams are tagged with it.
    local_candidate: SocketAddr,
    /// ICE-TCP: our TCP host candidate (passive on the SFU, active on a client), if any.
    tcp_candidate: Option<(SocketAddr, rtc::ice::tcp_type::TcpType)>,
    /// Remote addresses heard over TCP: what we send them goes over TCP too.
    tcp_peers: HashSet<SocketAddr>,
    candidate_added: bool,
    next_inbound: u32,
    inbound: HashMap<String, Inbound>,
    next_outbound: u32,
    outbound: HashMap<OutboundId, Outbound>,
    outbound_by_track: HashMap<String, OutboundId>,
    /// Outbound tracks in the offer we are waiting to have answered.
    offered: Vec<OutboundId>,
    /// We made an offer and wait for its answer (signaling state have-local-offer).
    awaiting_answer: bool,
    pending: VecDeque<PeerOutput>,
    open_channels: HashSet<usize>,
    /// SSRCs the remote side declared (`a=ssrc`) in its last description.
    remote_ssrcs: HashSet<u32>,
    /// Simulcast layers the remote's description announces, and their SSRCs seen so far.
    simulcast: simulcast::SimulcastSdp,
    learned_ssrcs: simulcast::LearnedSsrcs,
    /// The negotiated id of the audio-level header extension, if any.
    audio_level_ext: Option<u8>,
    /// The ICE ufrag of the remote side's last description (checks must name it).
    remote_ufrag: Option<String>,
    /// Round trip measured from the remote side's receiver reports, smoothed.
    rtt_ms: Option<f64>,
    /// The fraction lost (of 256) the remote side last reported for each stream we send.
    loss_down: Vec<(u32, u8)>,
    /// RTP packets we handed to the stack to send.
    rtp_written: u64,
    /// Until the connection is up; then dropped.
    replay: Option<Box<FlightReplay>>,
    /// The bandwidth towards the remote side, and the NACKs received, as the interceptor
    /// chain tells them.
    chain: std::sync::Arc<feedback::ChainShared>,
    state: ConnectionState,
    /// The connection has been up (DTLS done): sending before would only fail.
    connected_once: bool,
    /// The forwarding fast path, once started (server side, see `fast_path`).
    fast: Option<Box<fast::FastPath>>,
    /// The negotiated id of the transport-wide sequence number extension, if any.
    transport_cc_ext: Option<u8>,
}

impl Peer {
    /// `local_candidate` is the address the remote side reaches us at: on a server the
    /// node's announced address and the shard's port; on a client its own socket.
    pub fn new(side: Side, local_candidate: SocketAddr, now: Instant) -> Result<Peer, PeerError> {
        let chain = std::sync::Arc::new(feedback::ChainShared::default());
        Ok(Peer {
            pc: engine::build(&side, now, chain.clone())?,
            chain,
            side,
            local_candidate,
            tcp_candidate: None,
            tcp_peers: HashSet::new(),
            candidate_added: false,
            next_inbound: 0,
            inbound: HashMap::new(),
            next_outbound: 0,
            outbound: HashMap::new(),
            outbound_by_track: HashMap::new(),
            offered: Vec::new(),
            awaiting_answer: false,
            pending: VecDeque::new(),
            open_channels: HashSet::new(),
            remote_ssrcs: HashSet::new(),
            simulcast: Default::default(),
            learned_ssrcs: Default::default(),
            audio_level_ext: None,
            remote_ufrag: None,
            rtt_ms: None,
            loss_down: Vec::new(),
            rtp_written: 0,
            replay: Some(Box::default()),
            state: ConnectionState::Connecting,
            connected_once: false,
            fast: None,
            transport_cc_ext: None,
        })
    }

    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The bandwidth towards the remote side in bits per second: the send-side estimate
    /// (GCC) once the remote reports transport-wide feedback, else its REMB, else unknown.
    pub fn bandwidth_estimate(&self) -> Option<u64> {
        self.chain.bandwidth.estimate_bps()
    }

    /// The path towards the remote side as the transport-wide feedback shows it: the queue
    /// building up on it (milliseconds) and the rate arriving (bits per second).
    pub fn path_feedback(&self) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let b = &self.chain.bandwidth;
        b.twcc_seen.load(Relaxed).then(|| {
            (
                b.queue_delay_ms.load(Relaxed),
                b.delivered_bps.load(Relaxed),
            )
        })
    }

    fn ensure_candidate(&mut self) -> Result<(), PeerError> {
        if self.candidate_added {
            return Ok(());
        }
        self.add_host_candidate("udp", self.local_candidate, Default::default())?;
        if let Some((addr, tcp_type)) = self.tcp_candidate {
            self.add_host_candidate("tcp", addr, tcp_type)?;
        }
        self.candidate_added = true;
        Ok(())
    }

    fn add_host_candidate(
        &mut self,
        network: &str,
        addr: SocketAddr,
        tcp_type: rtc::ice::tcp_type::TcpType,
    ) -> Result<(), PeerError> {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: network.to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            tcp_type,
        }
        .new_candidate_host()
        .map_err(PeerError::setup)?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(PeerError::setup)?;
        self.pc.add_local_candidate(init).map_err(PeerError::setup)
    }

    /// Open a data channel (reliable, ordered unless told otherwise).
    pub fn create_channel(&mut self, label: &str) -> Result<ChannelId, PeerError> {
        let dc = self
            .pc
            .create_data_channel(label, None)
            .map_err(PeerError::setup)?;
        Ok(ChannelId(dc.id()))
    }

    pub fn send_channel(
        &mut self,
        now: Instant,
        channel: ChannelId,
        data: &[u8],
        text: bool,
    ) -> bool {
        let Some(mut dc) = self.pc.data_channel(channel.0) else {
            return false;
        };
        if text {
            dc.send_text(now, String::from_utf8_lossy(data).into_owned())
                .is_ok()
        } else {
            dc.send(now, BytesMut::from(data)).is_ok()
        }
    }

    pub fn channel_is_open(&self, channel: ChannelId) -> bool {
        self.open_channels.contains(&channel.0)
    }

    /// Also offer an ICE-TCP host candidate: passive (we accept connections: the SFU) or
    /// active (we connect: a client behind a UDP-blocking firewall). Call before the first
    /// offer or answer.
    pub fn set_tcp_candidate(&mut self, addr: SocketAddr, passive: bool) {
        use rtc::ice::tcp_type::TcpType;
        self.tcp_candidate = Some((
            addr,
            if passive {
                TcpType::Passive
            } else {
                TcpType::Active
            },
        ));
    }

    /// Feed a datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.handle_datagram_on(now, from, data, false)
    }

    /// Feed a datagram received from `from`, over UDP or (`tcp`) unframed from an ICE-TCP
    /// connection.
    pub fn handle_datagram_on(&mut self, now: Instant, from: SocketAddr, data: &[u8], tcp: bool) {
        if tcp && self.tcp_peers.len() < 8 {
            self.tcp_peers.insert(from);
        }
        let (local_addr, transport_protocol) = match self.tcp_candidate {
            Some((addr, _)) if tcp => (addr, TransportProtocol::TCP),
            _ => (self.local_candidate, TransportProtocol::UDP),
        };
        if let Some(r) = &mut self.replay {
            // Encrypted traffic from the remote side proves it finished its handshake: our
            // last flight reached it, and there is nothing left to replay.
            if matches!(data.first(), Some(23) | Some(128..=191)) {
                self.replay = None;
            } else {
                r.on_received(data);
            }
        }
        if self.fast_receive(now, data) {
            return;
        }
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol,
            },
            message: BytesMut::from(data),
        };
        // `handle_read` queues its results; errors surface as events or dropped input.
        let _ = self.pc.handle_read(msg);
        if self.fast.is_some() {
            // A STUN check is how an ICE-lite agent learns of a new pair.
            if matches!(data.first(), Some(0..=3)) {
                self.refresh_fast_destination();
            }
            self.fast_feedback(now);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self
            .fast
            .as_deref_mut()
            .and_then(fast::FastPath::poll_transmit)
        {
            return Some(t);
        }
        if let Some(r) = &mut self.replay {
            if let Some((to, data)) = r.pending.pop_front() {
                let tcp = self.tcp_peers.contains(&to);
                return Some(Transmit { to, data, tcp });
            }
            let m = self.pc.poll_write()?;
            r.on_sent(m.transport.peer_addr, &m.message);
            let tcp = m.transport.transport_protocol == TransportProtocol::TCP
                || self.tcp_peers.contains(&m.transport.peer_addr);
            return Some(Transmit {
                to: m.transport.peer_addr,
                data: m.message,
                tcp,
            });
        }
        self.pc.poll_write().map(|m| Transmit {
            tcp: m.transport.transport_protocol == TransportProtocol::TCP
                || self.tcp_peers.contains(&m.transport.peer_addr),
            to: m.transport.peer_addr,
            data: m.message,
        })
    }

    pub fn next_timeout(&mut self) -> Option<Instant> {
        let rtc = self.pc.poll_timeout();
        match (rtc, self.fast.as_deref().map(fast::FastPath::poll_timeout)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.pc.handle_timeout(now);
        self.fast_timeout(now);
    }

    pub fn close(&mut self) {
        let _ = self.pc.close();
        self.state = ConnectionState::Closed;
    }

    /// Send RTP on an SSRC this peer never declared, through its own SRTP context. Only for
    /// hostile-input tests of the other side: the client library turns it on, the product
    /// never does.
    #[cfg(feature = "test-hooks")]
    pub fn send_undeclared_rtp(
        &mut self,
        now: Instant,
        ssrc: u32,
        payload_type: u8,
        sequence_number: u16,
    ) -> bool {
        let header = rtc::rtp::header::Header {
            version: 2,
            payload_type,
            sequence_number,
            ssrc,
            ..Default::default()
        };
        let pkt = rtc::rtp::packet::Packet {
            header,
            payload: Bytes::from_static(&[0u8; 100]),
        };
        self.pc
            .handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), pkt),
            })
            .is_ok()
    }

    /// Which side this peer is on.
    pub fn side(&self) -> &Side {
        &self.side
    }
}
