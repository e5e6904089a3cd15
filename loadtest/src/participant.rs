//! One WebRTC participant of the client library: a peer connection on its own UDP socket,
//! what it publishes (a tone, synthetic VP8) and what it measures about what it receives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use metaclinic_sfu::forward::seq_is_newer;
use metaclinic_sfu::media::{Codec, Feedback, RtpPacket};
use metaclinic_sfu::webrtc::{ConnectionState, InboundId, OutboundId, Peer, PeerOutput, Side};
use serde::Serialize;

use crate::media::audio::{FRAME_MS, FRAME_SAMPLES, ToneAnalyzer, ToneLoop};
use crate::media::freeze::FreezeDetector;
use crate::media::h264;
use crate::media::marker;
use crate::media::vp8::{self, Vp8Writer};
use crate::netem::{Link, LinkSpec, LinkStats};

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

/// Media frames due longer ago than this are skipped, not sent in a burst: a sender starved
/// of CPU must not snowball (bursts cost more CPU and memory, which makes it later still).
/// Skipped frames are counted (`frames_skipped`): they say the load tool, not the SFU, was
/// the bottleneck.
const MAX_MEDIA_LAG: Duration = Duration::from_millis(100);

/// Payload bytes per RTP packet of synthetic video.
const VIDEO_MTU: usize = 1100;

struct AudioOut {
    outbound: OutboundId,
    tone: Arc<ToneLoop>,
    index: usize,
    seq: u16,
    ts: u32,
    next: Instant,
    /// The previous frame was not sent (DTX): the next one starts a talk spurt.
    after_pause: bool,
}

/// The simulcast layers a publisher sends: RID, size divisor, share of the top bitrate.
const SIMULCAST_LAYERS: [(&str, u16, f64); 3] = [("q", 4, 0.1), ("h", 2, 0.33), ("f", 1, 1.0)];

struct VideoOut {
    outbound: OutboundId,
    spec: VideoSpec,
    /// One encoding, or one per simulcast layer (lowest first).
    layers: Vec<VideoLayerOut>,
    frame: u64,
    ts: u32,
    next: Instant,
    last_keyframe: Option<Instant>,
    keyframe_requested: bool,
}

/// One encoding of a video track: its own size, bitrate and numbering.
struct VideoLayerOut {
    writer: Vp8Writer,
    /// The writer's interframe and keyframe: they never change, so encode each once.
    encoded: [Option<Vec<u8>>; 2],
    frame_bytes: usize,
    picture_id: u16,
    seq: u16,
}

impl VideoLayerOut {
    fn new(spec: &VideoSpec, divisor: u16, share: f64) -> Self {
        let kbps = (f64::from(spec.kbps) * share).max(1.0);
        VideoLayerOut {
            writer: Vp8Writer::new(
                (spec.width / divisor).max(16),
                (spec.height / divisor).max(16),
            ),
            encoded: [None, None],
            frame_bytes: (kbps as usize * 1000 / 8 / spec.fps.max(1) as usize)
                .max(marker::MARKER_LEN + 16),
            picture_id: rand::random::<u16>() & 0x7fff,
            seq: rand::random(),
        }
    }

    /// The RTP payloads of the next frame, its tail marked with the send time.
    fn next_frame(&mut self, codec: Codec, keyframe: bool) -> Vec<Vec<u8>> {
        // Keyframes cost more, as in a real encoder.
        let target = if keyframe {
            self.frame_bytes * 3
        } else {
            self.frame_bytes
        };
        match codec {
            Codec::H264 => {
                let mut nalus = h264::frame(keyframe, target);
                if let Some(slice) = nalus.last_mut() {
                    marker::write(slice, marker::now_micros());
                }
                h264::packetize(&nalus, VIDEO_MTU)
            }
            _ => {
                let writer = &self.writer;
                let encoded = self.encoded[usize::from(keyframe)]
                    .get_or_insert_with(|| writer.frame(keyframe, &[]));
                let mut frame = Vec::with_capacity(encoded.len().max(target));
                frame.extend_from_slice(encoded);
                frame.resize(frame.len().max(target), 0);
                marker::write(&mut frame, marker::now_micros());
                vp8::packetize(&frame, self.picture_id, VIDEO_MTU)
            }
        }
    }
}

impl VideoOut {
    fn new(
        peer: &mut Peer,
        stream: &str,
        spec: VideoSpec,
        now: Instant,
    ) -> anyhow::Result<VideoOut> {
        anyhow::ensure!(spec.codec != Codec::Opus, "video must be VP8 or H.264");
        let track = format!("{stream}-video");
        let ssrc = || rand::random_range(1..=u32::MAX);
        let (outbound, layers) = if spec.simulcast {
            anyhow::ensure!(spec.codec == Codec::Vp8, "simulcast is sent as VP8");
            let rids: Vec<(String, u32)> = SIMULCAST_LAYERS
                .iter()
                .map(|(rid, _, _)| (rid.to_string(), ssrc()))
                .collect();
            let outbound = peer.add_simulcast_outbound(spec.codec, &rids, stream, &track)?;
            let layers = SIMULCAST_LAYERS
                .iter()
                .map(|&(_, divisor, share)| VideoLayerOut::new(&spec, divisor, share))
                .collect();
            (outbound, layers)
        } else {
            let outbound = peer.add_outbound(spec.codec, ssrc(), stream, &track)?;
            (outbound, vec![VideoLayerOut::new(&spec, 1, 1.0)])
        };
        Ok(VideoOut {
            outbound,
            layers,
            spec,
            frame: 0,
            ts: rand::random(),
            next: now,
            last_keyframe: None,
            keyframe_requested: true,
        })
    }
}

/// What arrived on one remote track.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteTrackStats {
    /// The publishing participant (the stream id the SFU gives the track).
    pub from: String,
    pub track: String,
    pub codec: Codec,
    pub ended: bool,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    /// Video frames completed (marker bit) or audio packets.
    pub frames: u64,
    /// Video frames of which every packet arrived (late ones included), and frames given up
    /// on (a packet still missing after newer frames moved on).
    pub frames_complete: u64,
    pub frames_incomplete: u64,
    pub keyframes: u64,
    /// The picture size of the last VP8 keyframe (what a simulcast layer switch changes).
    pub width: Option<u16>,
    pub height: Option<u16>,
    pub audio_frames_decoded: u64,
    pub decode_errors: u64,
    pub tone_hz: Option<f64>,
    pub level_dbfs: Option<f64>,
    /// Left over right ear, dB, over the last half second (a binaural mix's direction).
    pub balance_db: Option<f64>,
    pub latency_samples: u64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Interarrival jitter (RFC 3550's estimator, on the sender's clock the media carries).
    pub jitter_ms: f64,
    /// Video freezes: a gap between complete frames longer than three average frame
    /// intervals and at least 150 ms beyond one (WebRTC's definition), and their total length.
    pub freezes: u64,
    pub freeze_ms: u64,
    /// Since the participant was created.
    pub first_packet_ms: Option<u64>,
    pub last_packet_ms: Option<u64>,
}

struct RemoteTrack {
    stats: RemoteTrackStats,
    analyzer: Option<ToneAnalyzer>,
    latency_us: Histogram<u64>,
    first_seq: Option<u16>,
    highest_seq: u16,
    wraps: u64,
    frames: FrameAssembly,
    /// Arrival minus send time of the previous marked packet, microseconds.
    last_transit_us: Option<i64>,
    jitter_us: f64,
    freezes: FreezeDetector,
}

impl RemoteTrack {
    fn new(from: String, track: String, codec: Codec, decode_audio: bool) -> Self {
        let analyzer = if codec == Codec::Opus && decode_audio {
            ToneAnalyzer::new().ok()
        } else {
            None
        };
        RemoteTrack {
            stats: RemoteTrackStats {
                from,
                track,
                codec,
                ended: false,
                packets: 0,
                bytes: 0,
                lost: 0,
                frames: 0,
                frames_complete: 0,
                frames_incomplete: 0,
                keyframes: 0,
                width: None,
                height: None,
                audio_frames_decoded: 0,
                decode_errors: 0,
                tone_hz: None,
                level_dbfs: None,
                balance_db: None,
                latency_samples: 0,
                latency_ms_p50: None,
                latency_ms_p99: None,
                jitter_ms: 0.0,
                freezes: 0,
                freeze_ms: 0,
                first_packet_ms: None,
                last_packet_ms: None,
            },
            analyzer,
            // Two significant digits (1%): 20 KB per track where three would take 140 KB,
            // which hundreds of participants of a load run would feel.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)
                .expect("static histogram bounds"),
            first_seq: None,
            highest_seq: 0,
            wraps: 0,
            frames: FrameAssembly::default(),
            last_transit_us: None,
            jitter_us: 0.0,
            freezes: FreezeDetector::default(),
        }
    }

    fn on_packet(&mut self, p: &RtpPacket, since_start_ms: u64, arrival_us: u64) {
        let s = &mut self.stats;
        s.packets += 1;
        s.bytes += p.payload.len() as u64;
        s.first_packet_ms.get_or_insert(since_start_ms);
        s.last_packet_ms = Some(since_start_ms);
        match self.first_seq {
            None => {
                self.first_seq = Some(p.sequence_number);
                self.highest_seq = p.sequence_number;
            }
            Some(_) if seq_is_newer(p.sequence_number, self.highest_seq) => {
                if p.sequence_number < self.highest_seq {
                    self.wraps += 1;
                }
                self.highest_seq = p.sequence_number;
            }
            Some(_) => {}
        }
        if let Some(first) = self.first_seq {
            let expected = self.wraps * 65536 + self.highest_seq as u64 + 1 - first as u64;
            s.lost = expected.saturating_sub(s.packets);
        }
        if s.codec.is_keyframe_start(&p.payload) {
            s.keyframes += 1;
            if let Some((w, h)) = metaclinic_sfu::media::vp8_keyframe_size(&p.payload) {
                s.width = Some(w);
                s.height = Some(h);
            }
        }
        if s.codec == Codec::Opus || p.marker {
            s.frames += 1;
        }
        if s.codec != Codec::Opus {
            let start = frame_starts(s.codec, &p.payload);
            self.frames
                .on_packet(p.timestamp, p.sequence_number, start, p.marker);
            if self.frames.complete > s.frames_complete {
                self.freezes.on_frame(arrival_us);
                s.freezes = self.freezes.count;
                s.freeze_ms = self.freezes.total_us / 1000;
            }
            s.frames_complete = self.frames.complete;
            s.frames_incomplete = self.frames.incomplete;
        }
        if let Some(sent) = marker::read(&p.payload) {
            let _ = self
                .latency_us
                .record(arrival_us.saturating_sub(sent).max(1));
            // Packets of one video frame share a send time, so this is the path's jitter.
            let transit = arrival_us as i64 - sent as i64;
            if let Some(last) = self.last_transit_us.replace(transit) {
                let d = (transit - last).unsigned_abs() as f64;
                self.jitter_us += (d - self.jitter_us) / 16.0;
                s.jitter_ms = self.jitter_us / 1000.0;
            }
        }
        if let Some(a) = &mut self.analyzer {
            a.push(&p.payload);
        }
    }

    fn snapshot(&self) -> RemoteTrackStats {
        let mut s = self.stats.clone();
        if let Some(a) = &self.analyzer {
            s.audio_frames_decoded = a.frames_decoded;
            s.decode_errors = a.decode_errors;
            s.tone_hz = a.frequency_hz();
            s.level_dbfs = a.level_dbfs();
            s.balance_db = a.balance_db();
        }
        s.latency_samples = self.latency_us.len();
        if !self.latency_us.is_empty() {
            s.latency_ms_p50 = Some(self.latency_us.value_at_quantile(0.5) as f64 / 1000.0);
            s.latency_ms_p99 = Some(self.latency_us.value_at_quantile(0.99) as f64 / 1000.0);
        }
        s
    }
}

/// A participant's view of its call.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantStats {
    pub name: String,
    /// When the participant was created, on the process clock of `media::marker` (the
    /// tracks' `first_packet_ms` count from here).
    pub created_us: u64,
    pub connected: bool,
    /// From creation to the connection coming up.
    pub connect_ms: Option<u64>,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub keyframes_sent: u64,
    pub keyframe_requests: u64,
    pub video_frames_sent: u64,
    /// Audio and video frames not sent because this participant's thread was late.
    pub frames_skipped: u64,
    pub uplink: Option<LinkStats>,
    pub downlink: Option<LinkStats>,
    pub remote: Vec<RemoteTrackStats>,
}

impl ParticipantStats {
    /// Live (not ended) tracks received from `from`.
    pub fn tracks_from<'a>(
        &'a self,
        from: &'a str,
    ) -> impl Iterator<Item = &'a RemoteTrackStats> + 'a {
        self.remote
            .iter()
            .filter(move |t| t.from == from && !t.ended)
    }

    pub fn audio_from<'a>(&'a self, from: &'a str) -> Option<&'a RemoteTrackStats> {
        self.tracks_from(from).find(|t| t.codec == Codec::Opus)
    }

    pub fn video_from<'a>(&'a self, from: &'a str) -> Option<&'a RemoteTrackStats> {
        self.tracks_from(from).find(|t| t.codec != Codec::Opus)
    }
}

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
}

impl Participant {
    pub fn new(
        spec: ParticipantSpec,
        tone: Option<Arc<ToneLoop>>,
        now: Instant,
    ) -> anyhow::Result<Participant> {
        let (socket, local) = bind_socket(spec.bind_ip)?;
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
        })
    }

    /// The next time media is due.
    pub fn next_media(&self) -> Option<Instant> {
        let a = self.audio.as_ref().map(|a| a.next);
        let v = self.video.as_ref().map(|v| v.next);
        match (a, v) {
            (Some(a), Some(v)) => Some(a.min(v)),
            (a, v) => a.or(v),
        }
    }

    /// Send what is due by `now`. Media waits for the connection (and the answer).
    pub fn send_media(&mut self, now: Instant) {
        let connected = self.connected_at.is_some();
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
                PeerOutput::UnroutableRtp
                | PeerOutput::ChannelOpened { .. }
                | PeerOutput::ChannelClosed { .. }
                | PeerOutput::ChannelMessage { .. } => {}
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

/// Does this packet carry the start of a video frame?
fn frame_starts(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        // VP8 payload descriptor: S bit with partition index 0.
        Codec::Vp8 => payload
            .first()
            .is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0),
        // H.264: anything but a FU-A continuation starts a frame's first NAL unit or is one;
        // frames of several NAL units count once their marker packet closes them.
        Codec::H264 => match payload.first().map(|b| b & 0x1f) {
            Some(28) => payload.get(1).is_some_and(|b| b & 0x80 != 0),
            Some(_) => true,
            None => false,
        },
        Codec::Opus => false,
    }
}

/// Which video frames arrived whole: packets grouped by RTP timestamp, a frame complete when
/// its first and last (marker) packets and every sequence number between them are in. A frame
/// still incomplete when a frame 16 newer has completed is given up on.
#[derive(Default)]
struct FrameAssembly {
    pending: Vec<PendingFrame>,
    /// Timestamps of frames already counted, so that a late duplicate does not count twice.
    done: std::collections::VecDeque<u32>,
    complete: u64,
    incomplete: u64,
}

struct PendingFrame {
    ts: u32,
    first: Option<u16>,
    last: Option<u16>,
    seqs: Vec<u16>,
    age: u32,
}

impl FrameAssembly {
    fn on_packet(&mut self, ts: u32, seq: u16, start: bool, marker: bool) {
        if self.done.contains(&ts) {
            return;
        }
        let i = match self.pending.iter().position(|f| f.ts == ts) {
            Some(i) => i,
            None => {
                self.pending.push(PendingFrame {
                    ts,
                    first: None,
                    last: None,
                    seqs: Vec::new(),
                    age: 0,
                });
                self.pending.len() - 1
            }
        };
        let f = &mut self.pending[i];
        if !f.seqs.contains(&seq) {
            f.seqs.push(seq);
        }
        if start {
            f.first = Some(seq);
        }
        if marker {
            f.last = Some(seq);
        }
        let whole = match (f.first, f.last) {
            (Some(a), Some(b)) => f.seqs.len() == usize::from(b.wrapping_sub(a)) + 1,
            _ => false,
        };
        if whole {
            self.pending.remove(i);
            self.complete += 1;
            self.done.push_back(ts);
            if self.done.len() > 64 {
                self.done.pop_front();
            }
            for f in &mut self.pending {
                f.age += 1;
            }
            let done = &mut self.done;
            let mut given_up = 0;
            self.pending.retain(|f| {
                let keep = f.age < 16;
                if !keep {
                    given_up += 1;
                    done.push_back(f.ts);
                }
                keep
            });
            while self.done.len() > 64 {
                self.done.pop_front();
            }
            self.incomplete += given_up;
        }
    }
}
