//! One WebRTC participant of the client library: a peer connection on its own UDP socket,
//! what it publishes (a tone, synthetic VP8) and what it measures about what it receives.
//!
//! - `spec`: what it is asked to be; `outbound`: what it sends; `remote`: what it measures
//!   of each track it receives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use metaclinic_sfu::media::{Codec, Feedback, RtpPacket};
use metaclinic_sfu::webrtc::{ConnectionState, InboundId, Peer, PeerOutput, Side};

use crate::media::audio::{FRAME_MS, FRAME_SAMPLES, ToneLoop};
use crate::media::marker;
use crate::netem::Link;

mod outbound;
mod remote;
mod spec;
mod vitals;

use outbound::{AudioOut, VideoOut};
use remote::RemoteTrack;
pub use remote::{ParticipantStats, RemoteTrackStats};
pub use spec::{AudioSpec, ParticipantSpec, PublishSpec, VideoSpec};
pub use vitals::VitalsSpec;

/// Media frames due longer ago than this are skipped, not sent in a burst: a sender starved
/// of CPU must not snowball (bursts cost more CPU and memory, which makes it later still).
/// Skipped frames are counted (`frames_skipped`): they say the load tool, not the SFU, was
/// the bottleneck.
const MAX_MEDIA_LAG: Duration = Duration::from_millis(100);

pub(crate) struct Participant {
    pub spec: ParticipantSpec,
    pub socket: mio::net::UdpSocket,
    pub peer: Peer,
    audio: Option<AudioOut>,
    video: Option<VideoOut>,
    remote: HashMap<InboundId, RemoteTrack>,
    /// Tracks in the order they opened, including ended ones.
    order: Vec<InboundId>,
    created: Instant,
    connected_at: Option<Instant>,
    sent_packets: u64,
    sent_bytes: u64,
    keyframes_sent: u64,
    keyframe_requests: u64,
    /// The peer's own deadline, as last asked.
    pub peer_timer: Option<Instant>,
    pub uplink: Option<Link>,
    pub downlink: Option<Link>,
    video_frames_sent: u64,
    frames_skipped: u64,
    /// The data channel (avatar poses in shared rooms), if opened.
    channel: Option<metaclinic_sfu::webrtc::ChannelId>,
    /// The ICE-TCP connection, once the peer sent something over TCP.
    pub tcp: Option<crate::ice_tcp::IceTcp>,
    /// Consultations: the `vitals` channel (a simulated device, or readings received).
    vitals: Option<vitals::VitalsChannel>,
    /// Relay-only: the TURN allocation everything goes through.
    pub relay: Option<crate::relay::TurnRelay>,
}

impl Participant {
    pub fn new(
        spec: ParticipantSpec,
        tone: Option<Arc<ToneLoop>>,
        now: Instant,
    ) -> anyhow::Result<Participant> {
        let (socket, mut local) = bind_socket(spec.bind_ip)?;
        let relay = match &spec.relay {
            Some(r) => {
                let relay = crate::relay::TurnRelay::allocate(
                    r,
                    spec.bind_ip,
                    std::time::Duration::from_secs(5),
                )?;
                // The relayed address is the only candidate (announced as the peer's host
                // candidate: the SFU is ICE-lite and answers checks wherever they come from).
                local = relay.relayed.unwrap_or(local);
                Some(relay)
            }
            None => None,
        };
        let mut peer = Peer::new(Side::Client, local, now)?;
        if spec.tcp_only {
            // An active TCP candidate: it connects, so it announces the discard port (RFC 6544).
            peer.set_tcp_candidate(std::net::SocketAddr::new(local.ip(), 9), false);
        }
        let stream = spec.name.clone();
        let rng_ssrc = || rand::random_range(1..=u32::MAX);
        let audio = match (&spec.publish.audio, tone) {
            (Some(_), Some(tone)) => {
                let outbound = peer.add_outbound(
                    Codec::Opus,
                    rng_ssrc(),
                    &stream,
                    &format!("{stream}-audio"),
                )?;
                // Speakers start at random points of the talk pattern: not all in step.
                let speech = spec.publish.audio.as_ref().is_some_and(|a| a.speech);
                let index = if speech {
                    rand::random_range(0..tone.packets.len())
                } else {
                    0
                };
                Some(AudioOut {
                    outbound,
                    tone,
                    index,
                    seq: rand::random(),
                    ts: rand::random(),
                    next: now,
                    after_pause: true,
                })
            }
            _ => None,
        };
        let video = match &spec.publish.video {
            Some(v) => Some(VideoOut::new(&mut peer, &stream, v.clone(), now)?),
            None => None,
        };
        // A connection needs one negotiated section to carry ICE and DTLS: a participant that
        // publishes nothing opens a data channel (the SFU's offers then add what it receives).
        let channel = if spec.data_channel || (audio.is_none() && video.is_none()) {
            Some(peer.create_channel("poses")?)
        } else {
            None
        };
        let vitals = match spec.vitals {
            Some(v) => Some(vitals::VitalsChannel::open(&mut peer, v, now)?),
            None => None,
        };
        let spec_links = (spec.uplink.clone(), spec.downlink.clone());
        Ok(Participant {
            spec,
            socket,
            peer,
            audio,
            video,
            remote: HashMap::new(),
            order: Vec::new(),
            created: now,
            connected_at: None,
            sent_packets: 0,
            sent_bytes: 0,
            keyframes_sent: 0,
            keyframe_requests: 0,
            peer_timer: None,
            uplink: spec_links.0.map(Link::new),
            downlink: spec_links.1.map(Link::new),
            video_frames_sent: 0,
            frames_skipped: 0,
            channel,
            tcp: None,
            vitals,
            relay,
        })
    }

    /// The next time media is due.
    pub fn next_media(&self) -> Option<Instant> {
        let a = self.audio.as_ref().map(|a| a.next);
        let v = self.video.as_ref().map(|v| v.next);
        let d = self.vitals.as_ref().and_then(|d| d.next_due());
        [a, v, d].into_iter().flatten().min()
    }

    /// Send what is due by `now`. Media waits for the connection (and the answer).
    pub fn send_media(&mut self, now: Instant) {
        let connected = self.connected_at.is_some();
        if let Some(d) = &mut self.vitals {
            d.send_due(&mut self.peer, now);
        }
        if let Some(a) = &mut self.audio {
            while a.next <= now {
                let late = now.duration_since(a.next) > MAX_MEDIA_LAG;
                a.next += Duration::from_millis(FRAME_MS);
                if !connected || !self.peer.outbound_ready(a.outbound) {
                    continue;
                }
                let frame = a.index % a.tone.packets.len();
                a.index += 1;
                if late {
                    // The thread fell behind: drop the frame, as a starved capture would.
                    a.ts = a.ts.wrapping_add(FRAME_SAMPLES as u32);
                    a.after_pause = true;
                    self.frames_skipped += 1;
                    continue;
                }
                let mut payload = a.tone.packets[frame].clone();
                if payload.is_empty() {
                    // DTX: a pause sends nothing; time moves on, sequence numbers do not.
                    a.ts = a.ts.wrapping_add(FRAME_SAMPLES as u32);
                    a.after_pause = true;
                    continue;
                }
                marker::write(&mut payload, marker::now_micros());
                let len = payload.len();
                let pkt = RtpPacket {
                    ssrc: 0,
                    sequence_number: a.seq,
                    timestamp: a.ts,
                    payload_type: 0,
                    // RFC 3551: the first packet of a talk spurt.
                    marker: std::mem::take(&mut a.after_pause),
                    payload: Bytes::from(payload),
                    // RFC 6464 level in -dBov, as a browser reports it.
                    audio_level: Some(a.tone.levels[frame]),
                };
                if self.peer.send_rtp(now, a.outbound, &pkt, a.seq, a.ts) {
                    self.sent_packets += 1;
                    self.sent_bytes += len as u64;
                }
                a.seq = a.seq.wrapping_add(1);
                a.ts = a.ts.wrapping_add(FRAME_SAMPLES as u32);
            }
        }
        if let Some(v) = &mut self.video {
            let interval = Duration::from_secs(1) / v.spec.fps.max(1);
            while v.next <= now {
                let late = now.duration_since(v.next) > MAX_MEDIA_LAG;
                v.next += interval;
                if !connected || !self.peer.outbound_ready(v.outbound) {
                    continue;
                }
                if late {
                    v.ts = v.ts.wrapping_add(90_000 / v.spec.fps.max(1));
                    self.frames_skipped += 1;
                    continue;
                }
                let keyframe = v.keyframe_requested
                    || v.last_keyframe
                        .is_none_or(|t| now.duration_since(t) >= v.spec.keyframe_interval);
                for (index, layer) in v.layers.iter_mut().enumerate() {
                    let packets = layer.next_frame(v.spec.codec, keyframe);
                    let count = packets.len();
                    for (i, payload) in packets.into_iter().enumerate() {
                        let len = payload.len();
                        let pkt = RtpPacket {
                            ssrc: 0,
                            sequence_number: layer.seq,
                            timestamp: v.ts,
                            payload_type: 0,
                            marker: i + 1 == count,
                            payload: Bytes::from(payload),
                            audio_level: None,
                        };
                        if self
                            .peer
                            .send_rtp_on_layer(now, v.outbound, index, &pkt, layer.seq, v.ts)
                        {
                            self.sent_packets += 1;
                            self.sent_bytes += len as u64;
                        }
                        layer.seq = layer.seq.wrapping_add(1);
                    }
                    layer.picture_id = (layer.picture_id + 1) & 0x7fff;
                }
                if keyframe {
                    v.keyframe_requested = false;
                    v.last_keyframe = Some(now);
                    self.keyframes_sent += 1;
                }
                v.frame += 1;
                self.video_frames_sent += 1;
                v.ts = v.ts.wrapping_add(90_000 / v.spec.fps.max(1));
            }
        }
    }

    /// Send a message on the data channel (an avatar pose); false when it is not open yet.
    pub fn send_on_channel(&mut self, now: Instant, data: &[u8]) -> bool {
        match self.channel {
            Some(c) if self.peer.channel_is_open(c) => self.peer.send_channel(now, c, data, false),
            _ => false,
        }
    }

    /// Send another tone (same frequency, another loudness) from the next frame on.
    pub fn set_tone(&mut self, tone: Arc<ToneLoop>) {
        if let Some(a) = &mut self.audio {
            a.tone = tone;
        }
    }

    /// Start or stop publishing video; the caller then renegotiates.
    pub fn set_video(&mut self, video: Option<VideoSpec>, now: Instant) -> anyhow::Result<()> {
        match (video, self.video.take()) {
            (Some(spec), None) => {
                let stream = self.spec.name.clone();
                self.video = Some(VideoOut::new(&mut self.peer, &stream, spec, now)?);
            }
            (None, Some(old)) => self.peer.remove_outbound(old.outbound)?,
            (_, current) => self.video = current,
        }
        Ok(())
    }

    /// Act on the peer's outputs.
    pub fn drive(&mut self, now: Instant) {
        while let Some(out) = self.peer.poll_output() {
            match out {
                PeerOutput::State(ConnectionState::Connected) => {
                    self.connected_at.get_or_insert(now);
                }
                PeerOutput::State(_) => {}
                PeerOutput::TrackOpened {
                    inbound,
                    codec,
                    stream_id,
                    track_id,
                } => {
                    self.remote.insert(
                        inbound,
                        RemoteTrack::new(stream_id, track_id, codec, self.spec.decode_audio),
                    );
                    self.order.push(inbound);
                }
                PeerOutput::TrackClosed { inbound } => {
                    if let Some(t) = self.remote.get_mut(&inbound) {
                        t.stats.ended = true;
                    }
                }
                PeerOutput::Rtp {
                    inbound, packet, ..
                } => {
                    let since = now.duration_since(self.created).as_millis() as u64;
                    let arrival = marker::micros_at(now);
                    if let Some(t) = self.remote.get_mut(&inbound) {
                        t.on_packet(&packet, since, arrival);
                    }
                }
                PeerOutput::Feedback {
                    feedback: Feedback::KeyframeRequest,
                    outbound,
                } => {
                    self.keyframe_requests += 1;
                    if let Some(v) = &mut self.video
                        && v.outbound == outbound
                    {
                        v.keyframe_requested = true;
                    }
                }
                PeerOutput::ChannelMessage { channel, data, .. } => {
                    if let Some(d) = self.vitals.as_mut().filter(|d| d.channel == channel) {
                        d.on_message(&data);
                    }
                }
                PeerOutput::UnroutableRtp
                | PeerOutput::ChannelOpened { .. }
                | PeerOutput::ChannelClosed { .. } => {}
            }
        }
    }

    /// Remote tracks that ended with a renegotiation are marked by the SFU's offer: a track
    /// whose transceiver went inactive. The peer reports that as `TrackClosed`.
    pub fn stats(&self) -> ParticipantStats {
        ParticipantStats {
            name: self.spec.name.clone(),
            created_us: marker::micros_at(self.created),
            connected: self.connected_at.is_some()
                && self.peer.state() == ConnectionState::Connected,
            connect_ms: self
                .connected_at
                .map(|t| t.duration_since(self.created).as_millis() as u64),
            sent_packets: self.sent_packets,
            sent_bytes: self.sent_bytes,
            keyframes_sent: self.keyframes_sent,
            keyframe_requests: self.keyframe_requests,
            video_frames_sent: self.video_frames_sent,
            frames_skipped: self.frames_skipped,
            uplink: self.uplink.as_ref().map(|l| l.stats),
            downlink: self.downlink.as_ref().map(|l| l.stats),
            vitals_sent: self.vitals.as_ref().map_or(Vec::new(), |d| d.sent.clone()),
            vitals_received: self
                .vitals
                .as_ref()
                .map_or(Vec::new(), |d| d.received.clone()),
            vitals_malformed: self.vitals.as_ref().map_or(0, |d| d.malformed),
            remote: self
                .order
                .iter()
                .filter_map(|id| self.remote.get(id))
                .map(RemoteTrack::snapshot)
                .collect(),
        }
    }

    pub fn reset_latency(&mut self) {
        for t in self.remote.values_mut() {
            t.latency_us.reset();
        }
    }

    /// Merge every received track's latency into `into`.
    pub fn merge_latency(&self, into: &mut Histogram<u64>) {
        for t in self.remote.values() {
            let _ = into.add(&t.latency_us);
        }
    }
}

/// A participant's UDP socket on a free port of `ip`, and its address.
pub(crate) fn bind_socket(
    ip: std::net::IpAddr,
) -> std::io::Result<(mio::net::UdpSocket, std::net::SocketAddr)> {
    let socket = std::net::UdpSocket::bind((ip, 0))?;
    socket.set_nonblocking(true)?;
    // Many participants share a thread; a burst must not overflow their sockets.
    metaclinic_sfu::shard::udp::enlarge_buffers(&socket, 1 << 20);
    let local = socket.local_addr()?;
    Ok((mio::net::UdpSocket::from_std(socket), local))
}
