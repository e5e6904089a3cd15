//! The one module that knows the WebRTC library (webrtc-rs `rtc`, sans-I/O). Everything else
//! sees [`Peer`]: datagrams and timeouts in, our own [`PeerOutput`]s and datagrams out.
//!
//! The same wrapper serves both sides of a call: the SFU's end of a participant's connection
//! (ICE-lite, fixed credentials, one shared UDP port) and the client library's participants
//! (full ICE, controlling), so tests and load runs exercise exactly this stack.

mod dtls_replay;
mod engine;
mod estimator;
mod feedback;
mod nack_filter;
mod simulcast;
pub mod stun;

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

/// A connection's cumulative counters (see [`Peer::link_counters`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkCounters {
    pub packets_received: u64,
    pub packets_lost: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Packets the remote side NACKed (asked for again), and our retransmissions.
    pub nacked_packets: u64,
    pub retransmissions: u64,
    /// Packets NACKed that were never sent or are no longer held: answered with a keyframe.
    pub unanswerable_nacks: u64,
    /// Worst interarrival jitter of what we receive, milliseconds.
    pub jitter_ms: Option<f64>,
    /// From the remote side's latest receiver reports: round trip and loss it saw.
    pub rtt_ms: Option<f64>,
    pub loss_down_pct: Option<f64>,
}

/// RFC 6464: the sender's audio level in every audio packet.
pub(super) const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// The id an SDP gives a header extension (`a=extmap:<id>[/<direction>] <uri>`). With
/// BUNDLE both sides use the offer's ids for the whole connection.
fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim_end().strip_prefix("a=extmap:")?;
        let (id, rest) = rest.split_once(' ')?;
        let id = id.split('/').next()?.parse::<u8>().ok()?;
        (rest.split_whitespace().next()? == uri && (1..=14).contains(&id)).then_some(id)
    })
}

/// The ICE ufrag a description gives (`a=ice-ufrag:`, session or first media level; with
/// BUNDLE all sections share it).
fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim_end().to_owned())
}

/// The SSRCs an SDP declares with `a=ssrc:<ssrc> ...` (RFC 5576), retransmission and FEC
/// streams included.
fn declared_ssrcs(sdp: &str) -> HashSet<u32> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=ssrc:"))
        .filter_map(|rest| rest.split([' ', '\r']).next()?.parse().ok())
        .collect()
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
            rtp_written: 0,
            replay: Some(Box::default()),
            state: ConnectionState::Connecting,
            connected_once: false,
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

    /// Is an offer/answer exchange under way (we or they have an unanswered offer)?
    pub fn is_negotiating(&self) -> bool {
        self.awaiting_answer
    }

    /// Apply the remote side's offer and return our answer.
    pub fn accept_offer(&mut self, now: Instant, sdp: &str) -> Result<String, PeerError> {
        if self.is_negotiating() {
            return Err(PeerError::Rejected(
                "an offer is already being negotiated".into(),
            ));
        }
        let offer = RTCSessionDescription::offer(sdp.to_owned()).map_err(PeerError::rejected)?;
        self.pc
            .set_remote_description(now, offer)
            .map_err(PeerError::rejected)?;
        self.ensure_candidate()?;
        let answer = self.pc.create_answer(None).map_err(PeerError::rejected)?;
        self.name_outbound_codecs();
        self.pc
            .set_local_description(now, answer)
            .map_err(PeerError::rejected)?;
        self.renegotiated();
        self.local_sdp()
    }

    /// Make an offer for the current set of tracks and channels.
    pub fn create_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        self.offer(now, None)
    }

    /// The client moved (a new network, a new local port): gather the new address and make
    /// an ICE-restart offer (new credentials); the session, its tracks and subscriptions stay.
    pub fn restart_ice(
        &mut self,
        now: Instant,
        new_local: SocketAddr,
    ) -> Result<String, PeerError> {
        self.local_candidate = new_local;
        self.candidate_added = false;
        let options = rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true };
        self.offer(now, Some(options))
    }

    fn offer(
        &mut self,
        now: Instant,
        options: Option<rtc::peer_connection::configuration::RTCOfferOptions>,
    ) -> Result<String, PeerError> {
        self.ensure_candidate()?;
        let offer = self.pc.create_offer(options).map_err(PeerError::setup)?;
        self.name_outbound_codecs();
        self.pc
            .set_local_description(now, offer)
            .map_err(PeerError::setup)?;
        // Only what this offer adds waits for the answer: tracks negotiated before keep
        // flowing, so nobody in the call notices someone joining.
        self.offered = self
            .outbound
            .iter()
            .filter(|(_, o)| o.payload_type.is_none())
            .map(|(id, _)| *id)
            .collect();
        self.awaiting_answer = true;
        self.local_sdp()
    }

    /// Withdraw our unanswered offer (the polite side of a glare, RFC 9429 §5.7).
    pub fn rollback(&mut self, now: Instant) -> Result<(), PeerError> {
        if !self.awaiting_answer {
            return Ok(());
        }
        let rollback = RTCSessionDescription::rollback(None).map_err(PeerError::setup)?;
        self.pc
            .set_local_description(now, rollback)
            .map_err(PeerError::setup)?;
        self.awaiting_answer = false;
        self.offered.clear();
        Ok(())
    }

    /// Apply the remote side's answer to our offer.
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), PeerError> {
        if !self.awaiting_answer {
            return Err(PeerError::Rejected(
                "no offer of ours is waiting for an answer".into(),
            ));
        }
        let answer = RTCSessionDescription::answer(sdp.to_owned()).map_err(PeerError::rejected)?;
        self.pc
            .set_remote_description(now, answer)
            .map_err(PeerError::rejected)?;
        self.awaiting_answer = false;
        self.renegotiated();
        Ok(())
    }

    /// After a completed exchange, payload types may have changed: learn them again.
    fn renegotiated(&mut self) {
        for out in self.outbound.values_mut() {
            out.payload_type = None;
        }
        for inbound in self.inbound.values_mut() {
            inbound.codecs.clear();
        }
        self.offered.clear();
        let ids: Vec<OutboundId> = self.outbound.keys().copied().collect();
        for id in ids {
            self.resolve_payload_type(id);
        }
        self.end_unreceived_tracks();
        let remote = self.pc.remote_description().map(|d| d.sdp.clone());
        self.remote_ssrcs = remote.as_deref().map(declared_ssrcs).unwrap_or_default();
        self.simulcast = remote
            .as_deref()
            .map(simulcast::SimulcastSdp::parse)
            .unwrap_or_default();
        self.audio_level_ext = remote
            .as_deref()
            .and_then(|sdp| extmap_id(sdp, AUDIO_LEVEL_URI));
        self.remote_ufrag = remote.as_deref().and_then(ice_ufrag);
    }

    /// May a STUN check naming `remote` as its sender come from our remote side? Before a
    /// remote description, or when it names no ufrag, the WebRTC stack decides.
    pub fn expects_remote_ufrag(&self, remote: &str) -> bool {
        self.remote_ufrag.as_deref().is_none_or(|u| u == remote)
    }

    /// May RTP on `ssrc` come in? Yes if the remote side declared the SSRC, or if the packet's
    /// plaintext header names a simulcast layer its description announced (browsers declare
    /// no SSRCs for those). Anything else is dropped before decryption.
    pub fn admits_inbound_rtp(&mut self, ssrc: u32, packet: &[u8]) -> bool {
        self.remote_ssrcs.contains(&ssrc)
            || (!self.simulcast.is_empty()
                && (self.learned_ssrcs.contains(ssrc)
                    || self.learned_ssrcs.admit(&self.simulcast, packet, ssrc)))
    }

    /// The library raises no event when a renegotiation stops a remote track; a track whose
    /// transceiver no longer receives has ended.
    fn end_unreceived_tracks(&mut self) {
        let mut ended = Vec::new();
        for (track_id, t) in &self.inbound {
            let receiving = self
                .pc
                .rtp_transceiver(RTCRtpTransceiverId::from(t.receiver))
                .is_some_and(|tr| tr.current_direction().has_recv());
            if !receiving {
                ended.push(track_id.clone());
            }
        }
        for track_id in ended {
            if let Some(t) = self.inbound.remove(&track_id)
                && t.announced
            {
                self.pending
                    .push_back(PeerOutput::TrackClosed { inbound: t.id });
            }
        }
    }

    fn local_sdp(&self) -> Result<String, PeerError> {
        self.pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| PeerError::Setup("no local description".into()))
    }

    /// A trickled candidate from the remote side.
    pub fn add_remote_candidate(
        &mut self,
        candidate: &str,
        sdp_mid: Option<String>,
        m_line: Option<u16>,
    ) -> Result<(), PeerError> {
        let init = RTCIceCandidateInit {
            candidate: candidate.to_owned(),
            sdp_mid,
            sdp_mline_index: m_line,
            ..Default::default()
        };
        self.pc
            .add_remote_candidate(init)
            .map_err(PeerError::rejected)
    }

    /// Start sending a track; it reaches the remote side with the next offer/answer.
    pub fn add_outbound(
        &mut self,
        codec: Codec,
        ssrc: u32,
        stream_id: &str,
        track_id: &str,
    ) -> Result<OutboundId, PeerError> {
        self.add_outbound_encodings(codec, &[(String::new(), ssrc)], stream_id, track_id)
    }

    /// Start sending a simulcast track: one encoding per `(rid, ssrc)`, lowest quality first
    /// by convention (the receiver ranks them by what it measures anyway).
    pub fn add_simulcast_outbound(
        &mut self,
        codec: Codec,
        layers: &[(String, u32)],
        stream_id: &str,
        track_id: &str,
    ) -> Result<OutboundId, PeerError> {
        if layers.len() < 2 || layers.iter().any(|(rid, _)| rid.is_empty()) {
            return Err(PeerError::Setup(
                "simulcast needs two or more named layers".into(),
            ));
        }
        self.add_outbound_encodings(codec, layers, stream_id, track_id)
    }

    fn add_outbound_encodings(
        &mut self,
        codec: Codec,
        layers: &[(String, u32)],
        stream_id: &str,
        track_id: &str,
    ) -> Result<OutboundId, PeerError> {
        let kind = match codec.kind() {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let track = MediaStreamTrack::new(
            stream_id.to_owned(),
            track_id.to_owned(),
            track_id.to_owned(),
            kind,
            // No codec here on purpose: a codec on the encoding narrows the m-line to it,
            // and rtc then refuses every other codec of that kind on this connection for
            // good. The m-line offers all our codecs; packets carry `codec`'s type.
            encodings(layers, None),
        );
        // A send-only transceiver of its own: `add_track` would reuse a transceiver that
        // receives (say, the remote's camera) and fail when the codecs differ.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![stream_id.to_owned()],
            send_encodings: vec![],
        };
        let transceiver = self
            .pc
            .add_transceiver_from_track(track, Some(init))
            .map_err(PeerError::setup)?;
        let sender = RTCRtpSenderId::from(transceiver);
        let id = OutboundId(self.next_outbound);
        self.next_outbound += 1;
        self.outbound.insert(
            id,
            Outbound {
                sender,
                ssrcs: layers.iter().map(|(_, ssrc)| *ssrc).collect(),
                rids: layers.iter().map(|(rid, _)| rid.clone()).collect(),
                mid: None,
                codec,
                stream_id: stream_id.to_owned(),
                track_id: track_id.to_owned(),
                codec_named: false,
                payload_type: None,
            },
        );
        self.outbound_by_track.insert(track_id.to_owned(), id);
        Ok(id)
    }

    /// Name each new outbound track's codec on its encoding, now that the SDP is written.
    ///
    /// rtc binds a sender's streams to its interceptors (the NACK responder's packet
    /// buffer, sender reports, TWCC) when negotiation completes, and only for encodings that
    /// name a codec. Naming it when the track is added would narrow the m-line to that codec
    /// for good (see `add_outbound`); the transceiver's codec preferences are fixed at
    /// creation, so naming it afterwards changes no SDP and lets the binding happen.
    fn name_outbound_codecs(&mut self) {
        for out in self.outbound.values_mut().filter(|o| !o.codec_named) {
            let kind = match out.codec.kind() {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            let layers: Vec<(String, u32)> = out
                .rids
                .iter()
                .cloned()
                .zip(out.ssrcs.iter().copied())
                .collect();
            let track = MediaStreamTrack::new(
                out.stream_id.clone(),
                out.track_id.clone(),
                out.track_id.clone(),
                kind,
                encodings(&layers, Some(engine::rtp_codec(out.codec))),
            );
            if let Some(mut sender) = self.pc.rtp_sender(out.sender)
                && sender.replace_track(track).is_ok()
            {
                out.codec_named = true;
            }
        }
    }

    /// Stop sending a track; the remote side learns with the next offer/answer.
    pub fn remove_outbound(&mut self, id: OutboundId) -> Result<(), PeerError> {
        let Some(out) = self.outbound.remove(&id) else {
            return Ok(());
        };
        self.outbound_by_track.retain(|_, v| *v != id);
        self.offered.retain(|o| *o != id);
        self.pc.remove_track(out.sender).map_err(PeerError::setup)
    }

    fn resolve_payload_type(&mut self, id: OutboundId) -> Option<u8> {
        let out = self.outbound.get(&id)?;
        if let Some(pt) = out.payload_type {
            return Some(pt);
        }
        let (sender, codec) = (out.sender, out.codec);
        let pt = self
            .pc
            .rtp_sender(sender)?
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| Codec::from_mime_type(&c.rtp_codec.mime_type) == Some(codec))
            .map(|c| c.payload_type)?;
        let mid = self
            .pc
            .rtp_transceiver(RTCRtpTransceiverId::from(sender))
            .and_then(|t| t.mid().clone());
        if let Some(out) = self.outbound.get_mut(&id) {
            out.payload_type = Some(pt);
            out.mid = mid.map(Bytes::from);
        }
        Some(pt)
    }

    /// Can `id` carry media: the connection was up once (SRTP keyed), the track is
    /// negotiated, and it is not waiting for the answer that adds it?
    pub fn outbound_ready(&self, id: OutboundId) -> bool {
        self.connected_once
            && self
                .outbound
                .get(&id)
                .is_some_and(|o| o.payload_type.is_some())
            && !self.offered.contains(&id)
    }

    /// Send one packet on an outbound track with the given header values.
    pub fn send_rtp(
        &mut self,
        now: Instant,
        id: OutboundId,
        packet: &RtpPacket,
        sequence_number: u16,
        timestamp: u32,
    ) -> bool {
        self.send_rtp_on_layer(now, id, 0, packet, sequence_number, timestamp)
    }

    /// Send one packet on layer `layer` (an index into the encodings) of an outbound track.
    pub fn send_rtp_on_layer(
        &mut self,
        now: Instant,
        id: OutboundId,
        layer: usize,
        packet: &RtpPacket,
        sequence_number: u16,
        timestamp: u32,
    ) -> bool {
        if !self.outbound_ready(id) {
            return false;
        }
        let Some(out) = self.outbound.get(&id) else {
            return false;
        };
        let Some(payload_type) = out.payload_type else {
            return false;
        };
        let Some(&ssrc) = out.ssrcs.get(layer) else {
            return false;
        };
        let mut header = rtc::rtp::header::Header {
            version: 2,
            marker: packet.marker,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            ..Default::default()
        };
        if out.rids.len() > 1 {
            // Simulcast: the receiver learns each layer's SSRC from these (RFC 8852).
            if let (Some(ext), Some(mid)) = (self.simulcast.mid_ext, &out.mid) {
                let _ = header.set_extension(ext, mid.clone());
            }
            if let Some(ext) = self.simulcast.rid_ext {
                let _ = header.set_extension(ext, Bytes::from(out.rids[layer].clone()));
            }
        }
        if let (Some(id), Some(level)) = (self.audio_level_ext, packet.audio_level)
            && out.codec == Codec::Opus
        {
            // Voice activity is not known here: the V bit stays clear.
            let _ = header.set_extension(id, Bytes::copy_from_slice(&[level.min(127)]));
        }
        let pkt = rtc::rtp::packet::Packet {
            header,
            payload: packet.payload.clone(),
        };
        // Straight into the pipeline: `RTCRtpSender::write_rtp` would look the sender's
        // parameters up again for every packet; we resolved them once.
        let written = self
            .pc
            .handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), pkt),
            })
            .is_ok();
        self.rtp_written += u64::from(written);
        written
    }

    /// Ask the remote sender of `inbound` for a keyframe (PLI) on the simulcast layers in
    /// `layers` (bit `i` for layer `i`; `u8::MAX` for all of them).
    pub fn request_keyframe(&mut self, now: Instant, inbound: InboundId, layers: u8) -> bool {
        let Some(track) = self.inbound.values().find(|t| t.id == inbound) else {
            return false;
        };
        let receiver = track.receiver;
        let plis: Vec<Box<dyn rtc::rtcp::Packet>> = track
            .layers
            .iter()
            .filter(|(_, l)| *l >= 8 || layers & (1 << l) != 0)
            .map(|&(media_ssrc, _)| {
                Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                }) as Box<dyn rtc::rtcp::Packet>
            })
            .collect();
        if plis.is_empty() {
            return false;
        }
        let Some(mut rx) = self.pc.rtp_receiver(receiver) else {
            return false;
        };
        rx.write_rtcp(now, plis).is_ok()
    }

    /// RFC 3550 §6.4.1: a receiver report echoes our last sender report's time (LSR) and
    /// how long it held it (DLSR); what is left of the time since is the round trip. The
    /// reports' clock is the wall clock, as rtc stamps its sender reports.
    fn measure_rtt(&mut self, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        use rtc::rtcp::receiver_report::ReceiverReport;
        use rtc::rtcp::sender_report::SenderReport;
        let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        else {
            return;
        };
        // The middle 32 bits of the NTP time: 16.16 fixed-point seconds.
        let secs = since_epoch.as_secs() + 2_208_988_800;
        let frac = (u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000;
        let now = (((secs & 0xffff) << 16) | (frac >> 16)) as u32;
        for p in packets {
            let any = p.as_any();
            let reports = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                &rr.reports
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                &sr.reports
            } else {
                continue;
            };
            for r in reports.iter().filter(|r| r.last_sender_report != 0) {
                let rtt = now.wrapping_sub(r.last_sender_report).wrapping_sub(r.delay);
                // A negative or absurd value (clock step, forged report) is no measurement.
                if rtt < 65_536 * 10 {
                    let ms = f64::from(rtt) * 1000.0 / 65_536.0;
                    self.rtt_ms = Some(self.rtt_ms.map_or(ms, |old| old * 0.8 + ms * 0.2));
                }
            }
        }
    }

    /// The connection's counters so far, from the stack's statistics (RTCP reports and its
    /// own bookkeeping). Cumulative; the caller takes differences over its interval.
    pub fn link_counters(&mut self, now: Instant) -> LinkCounters {
        let report = self.pc.get_stats(now, rtc::statistics::StatsSelector::None);
        let mut c = LinkCounters::default();
        for s in report.inbound_rtp_streams() {
            let r = &s.received_rtp_stream_stats;
            c.packets_received += r.packets_received;
            c.packets_lost += r.packets_lost.max(0) as u64;
            c.bytes_received += s.bytes_received;
            // rtc 0.21 reports jitter in RTP timestamp units (as RTCP carries it).
            let clock = match r.rtp_stream_stats.kind {
                RtpCodecKind::Audio => 48_000.0,
                _ => 90_000.0,
            };
            let jitter_ms = r.jitter / clock * 1000.0;
            c.jitter_ms = Some(c.jitter_ms.unwrap_or(0.0).max(jitter_ms));
        }
        let mut packets_sent = 0;
        for s in report.outbound_rtp_streams() {
            c.bytes_sent += s.sent_rtp_stream_stats.bytes_sent;
            packets_sent += s.sent_rtp_stream_stats.packets_sent;
        }
        // rtc counts only RTX as retransmissions; plain NACK answers show up as packets sent
        // that we never wrote.
        c.retransmissions = packets_sent.saturating_sub(self.rtp_written);
        let nacks = &self.chain.nacks;
        c.nacked_packets = nacks.named.load(std::sync::atomic::Ordering::Relaxed);
        c.unanswerable_nacks = nacks
            .unanswerable
            .load(std::sync::atomic::Ordering::Relaxed);
        for e in report.iter() {
            if let rtc::statistics::report::RTCStatsReportEntry::RemoteInboundRtp(r) = e {
                let lost = r.fraction_lost * 100.0;
                c.loss_down_pct = Some(c.loss_down_pct.map_or(lost, |x: f64| x.max(lost)));
            }
        }
        // rtc 0.21 leaves the RTT at zero; we measure it from the reports ourselves.
        c.rtt_ms = self.rtt_ms;
        c
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
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
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
        self.pc.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.pc.handle_timeout(now);
    }

    pub fn close(&mut self) {
        let _ = self.pc.close();
        self.state = ConnectionState::Closed;
    }

    /// The next thing that happened, in order: state changes and track events before media.
    pub fn poll_output(&mut self) -> Option<PeerOutput> {
        loop {
            if let Some(out) = self.pending.pop_front() {
                return Some(out);
            }
            // Media first: asking for events walks the whole pipeline, and per packet that
            // cost as much as the packet. Events are taken when a packet needs them (a
            // track's first packet arrives with its OnOpen) and when no media is waiting.
            if let Some(msg) = self.pc.poll_read() {
                if let RTCMessage::RtpPacket(track_id, _) = &msg.message
                    && !self.inbound.contains_key(track_id)
                {
                    while let Some(event) = self.pc.poll_event() {
                        self.on_event(event);
                    }
                }
                self.on_message(msg.message);
                continue;
            }
            let event = self.pc.poll_event()?;
            self.on_event(event);
        }
    }

    fn on_event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                let state = match s {
                    RTCPeerConnectionState::Connected => ConnectionState::Connected,
                    RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
                    RTCPeerConnectionState::Failed => ConnectionState::Failed,
                    RTCPeerConnectionState::Closed => ConnectionState::Closed,
                    _ => ConnectionState::Connecting,
                };
                self.connected_once |= state == ConnectionState::Connected;
                if state != self.state {
                    self.state = state;
                    self.pending.push_back(PeerOutput::State(state));
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                if let Some(track) = self.inbound.get(&init.track_id) {
                    // Another simulcast layer of a track we know.
                    let (mid, receiver) = (track.mid.clone(), track.receiver);
                    let rid = init.rid.as_deref();
                    let layer = self.layer_index(mid.as_deref(), receiver, init.ssrc, rid);
                    if let Some(track) = self.inbound.get_mut(&init.track_id)
                        && !track.layers.iter().any(|(s, _)| *s == init.ssrc)
                        && track.layers.len() < 8
                    {
                        track.layers.push((init.ssrc, layer));
                    }
                    return;
                }
                let id = InboundId(self.next_inbound);
                self.next_inbound += 1;
                let stream_id = init.stream_ids.first().cloned().unwrap_or_default();
                let mid = self
                    .pc
                    .rtp_transceiver(RTCRtpTransceiverId::from(init.receiver_id))
                    .and_then(|t| t.mid().clone());
                let layer = self.layer_index(
                    mid.as_deref(),
                    init.receiver_id,
                    init.ssrc,
                    init.rid.as_deref(),
                );
                self.inbound.insert(
                    init.track_id,
                    Inbound {
                        id,
                        receiver: init.receiver_id,
                        mid,
                        layers: vec![(init.ssrc, layer)],
                        stream_id,
                        codecs: Vec::new(),
                        announced: false,
                    },
                );
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                if let Some(t) = self.inbound.remove(&track_id)
                    && t.announced
                {
                    self.pending
                        .push_back(PeerOutput::TrackClosed { inbound: t.id });
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                let label = self
                    .pc
                    .data_channel(id)
                    .map(|dc| dc.label().to_owned())
                    .unwrap_or_default();
                self.open_channels.insert(id);
                self.pending.push_back(PeerOutput::ChannelOpened {
                    channel: ChannelId(id),
                    label,
                });
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id))
                if self.open_channels.remove(&id) =>
            {
                self.pending.push_back(PeerOutput::ChannelClosed {
                    channel: ChannelId(id),
                });
            }
            _ => {}
        }
    }

    fn on_message(&mut self, message: RTCMessage) {
        match message {
            RTCMessage::RtpPacket(track_id, pkt) => self.on_rtp(&track_id, pkt),
            RTCMessage::RtcpPacket(track_id, packets) => {
                self.measure_rtt(&packets);
                let Some(&outbound) = self.outbound_by_track.get(&track_id) else {
                    return;
                };
                let wants_keyframe = packets.iter().any(|p| {
                    p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                        || p.as_any().downcast_ref::<FullIntraRequest>().is_some()
                });
                if wants_keyframe {
                    self.pending.push_back(PeerOutput::Feedback {
                        outbound,
                        feedback: Feedback::KeyframeRequest,
                    });
                }
            }
            RTCMessage::DataChannelMessage(id, msg) => {
                self.pending.push_back(PeerOutput::ChannelMessage {
                    channel: ChannelId(id),
                    data: msg.data.freeze(),
                    text: msg.is_string,
                });
            }
            _ => {}
        }
    }

    fn on_rtp(&mut self, track_id: &str, pkt: rtc::rtp::packet::Packet) {
        let pt = pkt.header.payload_type;
        let Some(track) = self.inbound.get_mut(track_id) else {
            self.pending.push_back(PeerOutput::UnroutableRtp);
            return;
        };
        let codec = match track.codecs.iter().find(|(p, _)| *p == pt) {
            Some(&(_, codec)) => codec,
            None => {
                let receiver = track.receiver;
                let codec = self.pc.rtp_receiver(receiver).and_then(|mut rx| {
                    rx.get_parameters()
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.payload_type == pt)
                        .and_then(|c| Codec::from_mime_type(&c.rtp_codec.mime_type))
                });
                let Some(track) = self.inbound.get_mut(track_id) else {
                    return;
                };
                track.codecs.push((pt, codec));
                codec
            }
        };
        let Some(track) = self.inbound.get_mut(track_id) else {
            return;
        };
        let Some(codec) = codec else {
            self.pending.push_back(PeerOutput::UnroutableRtp);
            return;
        };
        if !track.announced {
            track.announced = true;
            self.pending.push_back(PeerOutput::TrackOpened {
                inbound: track.id,
                codec,
                stream_id: track.stream_id.clone(),
                track_id: track_id.to_owned(),
            });
        }
        let audio_level = match self.audio_level_ext {
            Some(id) if codec == Codec::Opus => pkt
                .header
                .get_extension(id)
                .and_then(|v| v.first().map(|b| b & 0x7f)),
            _ => None,
        };
        let h = pkt.header;
        let layer = match track.layers.iter().find(|(s, _)| *s == h.ssrc) {
            Some(&(_, layer)) => layer,
            None => {
                // A layer whose first packet came before its open event.
                let (mid, receiver, id) = (track.mid.clone(), track.receiver, track.id);
                let layer = self.layer_index(mid.as_deref(), receiver, h.ssrc, None);
                if let Some(track) = self.inbound.get_mut(track_id)
                    && track.layers.len() < 8
                {
                    track.layers.push((h.ssrc, layer));
                }
                let _ = id;
                layer
            }
        };
        let Some(track) = self.inbound.get(track_id) else {
            return;
        };
        self.pending.push_back(PeerOutput::Rtp {
            inbound: track.id,
            layer,
            packet: RtpPacket {
                ssrc: h.ssrc,
                sequence_number: h.sequence_number,
                timestamp: h.timestamp,
                payload_type: h.payload_type,
                marker: h.marker,
                payload: pkt.payload,
                audio_level,
            },
        });
    }

    /// The layer index of an inbound SSRC: its RID's place in the remote's `a=simulcast`
    /// order (asking the receiver for the RID if the caller does not know it), else 0.
    fn layer_index(
        &mut self,
        mid: Option<&str>,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<&str>,
    ) -> u8 {
        let rid = match rid {
            Some(r) => Some(r.to_owned()),
            None => self
                .pc
                .rtp_receiver(receiver)
                .and_then(|rx| rx.track().rid(ssrc).map(|r| r.to_string())),
        };
        match (mid, rid) {
            (Some(mid), Some(rid)) => self
                .simulcast
                .layer_of(mid, &rid)
                .map_or(0, |l| l.min(u8::MAX as usize) as u8),
            _ => 0,
        }
    }

    /// Send RTP on an SSRC this peer never declared, through its own SRTP context. Only for
    /// hostile-input tests of the other side.
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

/// One encoding per `(rid, ssrc)`; the rid stays empty without simulcast.
fn encodings(
    layers: &[(String, u32)],
    codec: Option<RTCRtpCodec>,
) -> Vec<RTCRtpEncodingParameters> {
    layers
        .iter()
        .map(|(rid, ssrc)| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: rid.clone(),
                ssrc: Some(*ssrc),
                ..Default::default()
            },
            codec: codec.clone().unwrap_or_default(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_ssrcs_are_read_from_sdp() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:1234 cname:x\r\na=ssrc:1234 msid:a b\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=ssrc-group:FID 5 6\r\na=ssrc:5 cname:x\r\na=ssrc:6 cname:x\r\na=ssrc:bad\r\n";
        let got = declared_ssrcs(sdp);
        assert_eq!(got, [1234u32, 5, 6].into_iter().collect::<HashSet<u32>>());
    }
}

/// Two peers wired back to back in memory, with time advanced by hand: handshakes under
/// controlled loss, faster than real time.
#[cfg(test)]
mod handshake_tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pair(now: Instant) -> (Peer, Peer) {
        let mut server = Peer::new(
            Side::Server {
                ufrag: "srvufrag".into(),
                pwd: "serverpasswordserverpass".into(),
            },
            addr(40000),
            now,
        )
        .unwrap();
        let mut client = Peer::new(Side::Client, addr(50000), now).unwrap();
        client
            .add_outbound(Codec::Opus, 1234, "c", "c-audio")
            .unwrap();
        let offer = client.create_offer(now).unwrap();
        let answer = server.accept_offer(now, &offer).unwrap();
        client.accept_answer(now, &answer).unwrap();
        (client, server)
    }

    /// Run until both are connected or `limit` of simulated time passes. `drop` decides per
    /// datagram (direction, its index in that direction, bytes) whether the network loses it.
    fn run(
        mut drop: impl FnMut(bool, usize, &[u8]) -> bool,
        limit: Duration,
    ) -> (ConnectionState, ConnectionState, Duration) {
        let start = Instant::now();
        let mut now = start;
        let (mut client, mut server) = pair(now);
        let (mut c2s, mut s2c) = (0usize, 0usize);
        while now.duration_since(start) < limit {
            while let Some(t) = client.poll_transmit() {
                c2s += 1;
                if !drop(true, c2s, &t.data) {
                    server.handle_datagram(now, addr(50000), &t.data);
                }
            }
            while let Some(t) = server.poll_transmit() {
                s2c += 1;
                if !drop(false, s2c, &t.data) {
                    client.handle_datagram(now, addr(40000), &t.data);
                }
            }
            while client.poll_output().is_some() {}
            while server.poll_output().is_some() {}
            if client.state() == ConnectionState::Connected
                && server.state() == ConnectionState::Connected
            {
                return (client.state(), server.state(), now.duration_since(start));
            }
            now += Duration::from_millis(10);
            for p in [&mut client, &mut server] {
                if p.next_timeout().is_some_and(|t| t <= now) {
                    p.handle_timeout(now);
                }
            }
        }
        (client.state(), server.state(), now.duration_since(start))
    }

    fn is_dtls(d: &[u8]) -> bool {
        matches!(d.first(), Some(20..=63))
    }

    #[test]
    fn handshakes_complete_under_heavy_random_loss() {
        let mut failed = Vec::new();
        for seed in 1..=50u32 {
            let mut x = seed.wrapping_mul(2654435761);
            let (c, s, took) = run(
                |_, _, _| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x % 100 < 20
                },
                Duration::from_secs(60),
            );
            if (c, s) != (ConnectionState::Connected, ConnectionState::Connected) {
                failed.push((seed, c, s, took));
            }
        }
        assert!(
            failed.is_empty(),
            "handshakes that did not finish under 20% loss: {failed:?}"
        );
    }

    #[test]
    fn a_clean_handshake_connects() {
        let (c, s, took) = run(|_, _, _| false, Duration::from_secs(10));
        assert_eq!(
            (c, s),
            (ConnectionState::Connected, ConnectionState::Connected),
            "after {took:?}"
        );
    }

    #[test]
    fn every_lost_dtls_flight_is_recovered() {
        // Lose, in turn, the n-th DTLS datagram in each direction (each is one flight here).
        let mut stalled = Vec::new();
        for to_server in [true, false] {
            for n in 1..=3 {
                let mut seen = 0;
                let (c, s, _) = run(
                    |dir, _, d| {
                        if dir == to_server && is_dtls(d) {
                            seen += 1;
                            return seen == n;
                        }
                        false
                    },
                    Duration::from_secs(30),
                );
                if (c, s) != (ConnectionState::Connected, ConnectionState::Connected) {
                    stalled.push(format!(
                        "datagram {n} {} (client {c:?}, server {s:?})",
                        if to_server {
                            "to the server"
                        } else {
                            "to the client"
                        }
                    ));
                }
            }
        }
        assert!(
            stalled.is_empty(),
            "losing these stalls the handshake: {stalled:#?}"
        );
    }
}

#[cfg(test)]
mod feedback_tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Move datagrams both ways and collect outputs, for `steps` of 5 ms.
    fn pump(
        client: &mut Peer,
        server: &mut Peer,
        now: &mut Instant,
        steps: usize,
        outs: &mut Vec<(bool, PeerOutput)>,
    ) {
        for _ in 0..steps {
            while let Some(t) = client.poll_transmit() {
                server.handle_datagram(*now, addr(50000), &t.data);
            }
            while let Some(t) = server.poll_transmit() {
                client.handle_datagram(*now, addr(40000), &t.data);
            }
            while let Some(o) = client.poll_output() {
                outs.push((true, o));
            }
            while let Some(o) = server.poll_output() {
                outs.push((false, o));
            }
            *now += Duration::from_millis(5);
            for p in [&mut *client, &mut *server] {
                if p.next_timeout().is_some_and(|t| t <= *now) {
                    p.handle_timeout(*now);
                }
            }
        }
    }

    fn vp8_packet(seq: u16) -> RtpPacket {
        RtpPacket {
            ssrc: 0,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            payload_type: 0,
            marker: true,
            payload: Bytes::from_static(&[0x10, 0x00, 0x9d, 0x01, 0x2a]),
            audio_level: None,
        }
    }

    #[test]
    fn a_keyframe_request_reaches_the_publisher() {
        let mut now = Instant::now();
        let mut server = Peer::new(
            Side::Server {
                ufrag: "srvufrag".into(),
                pwd: "serverpasswordserverpass".into(),
            },
            addr(40000),
            now,
        )
        .unwrap();
        let mut client = Peer::new(Side::Client, addr(50000), now).unwrap();
        let video = client
            .add_outbound(Codec::Vp8, 4321, "c", "c-video")
            .unwrap();
        let offer = client.create_offer(now).unwrap();
        let answer = server.accept_offer(now, &offer).unwrap();
        client.accept_answer(now, &answer).unwrap();
        let mut outs = Vec::new();
        pump(&mut client, &mut server, &mut now, 100, &mut outs);
        assert_eq!(client.state(), ConnectionState::Connected);
        for seq in 0..5 {
            assert!(client.send_rtp(now, video, &vp8_packet(seq), seq, u32::from(seq) * 3000));
            pump(&mut client, &mut server, &mut now, 2, &mut outs);
        }
        let inbound = outs
            .iter()
            .find_map(|(c, o)| match o {
                PeerOutput::TrackOpened { inbound, .. } if !c => Some(*inbound),
                _ => None,
            })
            .expect("the server sees the track");
        assert!(server.request_keyframe(now, inbound, u8::MAX));
        pump(&mut client, &mut server, &mut now, 10, &mut outs);
        assert!(
            outs.iter().any(|(c, o)| *c && matches!(o, PeerOutput::Feedback { outbound, feedback: Feedback::KeyframeRequest } if *outbound == video)),
            "the client never heard the keyframe request"
        );
    }
}

#[cfg(test)]
mod congestion_feedback_tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pump(client: &mut Peer, server: &mut Peer, now: &mut Instant, steps: usize) {
        for _ in 0..steps {
            while let Some(t) = client.poll_transmit() {
                server.handle_datagram(*now, addr(50000), &t.data);
            }
            while let Some(t) = server.poll_transmit() {
                client.handle_datagram(*now, addr(40000), &t.data);
            }
            while client.poll_output().is_some() {}
            while server.poll_output().is_some() {}
            *now += Duration::from_millis(5);
            for p in [&mut *client, &mut *server] {
                if p.next_timeout().is_some_and(|t| t <= *now) {
                    p.handle_timeout(*now);
                }
            }
        }
    }

    fn packet(seq: u16) -> RtpPacket {
        RtpPacket {
            ssrc: 0,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            payload_type: 0,
            marker: true,
            payload: Bytes::from(vec![0x10u8; 900]),
            audio_level: None,
        }
    }

    /// Transport-wide feedback flows both ways: the SFU reports what a publisher sends (for
    /// the publisher's own estimate), and estimates the bandwidth towards a subscriber from
    /// the subscriber's reports.
    #[test]
    fn transport_wide_feedback_reaches_both_sides() {
        let mut now = Instant::now();
        let mut server = Peer::new(
            Side::Server {
                ufrag: "srvufrag".into(),
                pwd: "serverpasswordserverpass".into(),
            },
            addr(40000),
            now,
        )
        .unwrap();
        let mut client = Peer::new(Side::Client, addr(50000), now).unwrap();
        let up = client
            .add_outbound(Codec::Vp8, 4321, "c", "c-video")
            .unwrap();
        let offer = client.create_offer(now).unwrap();
        assert!(offer.contains("transport-wide-cc"), "{offer}");
        let answer = server.accept_offer(now, &offer).unwrap();
        client.accept_answer(now, &answer).unwrap();
        pump(&mut client, &mut server, &mut now, 100);
        assert_eq!(server.state(), ConnectionState::Connected);
        // The SFU sends a track of its own to the client.
        let down = server
            .add_outbound(Codec::Vp8, 9876, "s", "s-video")
            .unwrap();
        let offer = server.create_offer(now).unwrap();
        let answer = client.accept_offer(now, &offer).unwrap();
        server.accept_answer(now, &answer).unwrap();
        pump(&mut client, &mut server, &mut now, 20);
        assert_eq!(server.bandwidth_estimate(), None, "no feedback yet");
        for seq in 0..300u16 {
            client.send_rtp(now, up, &packet(seq), seq, u32::from(seq) * 3000);
            server.send_rtp(now, down, &packet(seq), seq, u32::from(seq) * 3000);
            pump(&mut client, &mut server, &mut now, 2);
        }
        assert!(
            client.path_feedback().is_some(),
            "the publisher gets the SFU's transport-wide feedback"
        );
        let estimate = server.bandwidth_estimate();
        assert!(
            estimate.is_some_and(|e| e >= 64_000),
            "the SFU estimates the subscriber's bandwidth: {estimate:?}"
        );
        let (queue_ms, delivered) = server.path_feedback().unwrap();
        assert!(queue_ms < 50, "no queue in memory: {queue_ms} ms");
        assert!(delivered > 100_000, "delivered {delivered} bit/s");
    }
}

#[cfg(test)]
mod ice_restart_tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Pump datagrams between the client (at `client_at`) and the server for `steps` x 5 ms,
    /// returning the RTP packets the server received.
    fn pump(
        client: &mut Peer,
        server: &mut Peer,
        client_at: SocketAddr,
        now: &mut Instant,
        steps: usize,
    ) -> usize {
        let mut rtp = 0;
        for _ in 0..steps {
            while let Some(t) = client.poll_transmit() {
                server.handle_datagram(*now, client_at, &t.data);
            }
            while let Some(t) = server.poll_transmit() {
                if t.to == client_at {
                    client.handle_datagram(*now, addr(40000), &t.data);
                }
            }
            while client.poll_output().is_some() {}
            while let Some(o) = server.poll_output() {
                if matches!(o, PeerOutput::Rtp { .. }) {
                    rtp += 1;
                }
            }
            *now += Duration::from_millis(5);
            for p in [&mut *client, &mut *server] {
                if p.next_timeout().is_some_and(|t| t <= *now) {
                    p.handle_timeout(*now);
                }
            }
        }
        rtp
    }

    fn opus(seq: u16) -> RtpPacket {
        RtpPacket {
            ssrc: 0,
            sequence_number: seq,
            timestamp: u32::from(seq) * 960,
            payload_type: 0,
            marker: false,
            payload: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
            audio_level: None,
        }
    }

    #[test]
    fn an_ice_restart_from_a_new_port_keeps_the_session() {
        let mut now = Instant::now();
        let mut server = Peer::new(
            Side::Server {
                ufrag: "srvufrag".into(),
                pwd: "serverpasswordserverpass".into(),
            },
            addr(40000),
            now,
        )
        .unwrap();
        let mut client = Peer::new(Side::Client, addr(50000), now).unwrap();
        let audio = client
            .add_outbound(Codec::Opus, 777, "c", "c-audio")
            .unwrap();
        let offer = client.create_offer(now).unwrap();
        let answer = server.accept_offer(now, &offer).unwrap();
        client.accept_answer(now, &answer).unwrap();
        pump(&mut client, &mut server, addr(50000), &mut now, 100);
        assert_eq!(client.state(), ConnectionState::Connected);
        let mut got = 0;
        for seq in 0..10 {
            client.send_rtp(now, audio, &opus(seq), seq, u32::from(seq) * 960);
            got += pump(&mut client, &mut server, addr(50000), &mut now, 4);
        }
        assert!(got >= 9, "before the move: {got}");

        // The client moves to another port and restarts ICE; the old address goes dark.
        let offer = client.restart_ice(now, addr(50001)).unwrap();
        assert!(offer.contains("50001"), "{offer}");
        let answer = server.accept_offer(now, &offer).unwrap();
        client.accept_answer(now, &answer).unwrap();
        pump(&mut client, &mut server, addr(50001), &mut now, 200);
        let mut got = 0;
        for seq in 10..30 {
            client.send_rtp(now, audio, &opus(seq), seq, u32::from(seq) * 960);
            got += pump(&mut client, &mut server, addr(50001), &mut now, 4);
        }
        assert!(
            got >= 18,
            "after the move only {got} of 20 packets arrived; states {:?} {:?}",
            client.state(),
            server.state()
        );
    }
}
