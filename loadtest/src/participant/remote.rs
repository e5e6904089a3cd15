//! What a participant measures about each track it receives: packets, loss, jitter,
//! latency, whole frames, freezes, tone and stereo balance.

use hdrhistogram::Histogram;
use metaclinic_sfu::forward::seq_is_newer;
use metaclinic_sfu::media::{Codec, KeyframeStart, RtpPacket};
use serde::Serialize;

use crate::media::audio::ToneAnalyzer;
use crate::media::freeze::FreezeDetector;
use crate::media::marker;
use crate::netem::LinkStats;

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
    /// Packets that arrived more than one ahead of the highest before them: holes in the
    /// numbering as it arrived, repaired later or not (on a lossless link, the SFU's doing).
    pub seq_gaps: u64,
    /// The most media time between two packets adjacent in the numbering (RTP timestamps,
    /// in ms): a frame's worth normally; more where the stream was interrupted and resumed.
    pub max_media_gap_ms: f64,
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

pub(super) struct RemoteTrack {
    pub(super) stats: RemoteTrackStats,
    pub(super) analyzer: Option<ToneAnalyzer>,
    pub(super) latency_us: Histogram<u64>,
    pub(super) first_seq: Option<u16>,
    pub(super) highest_seq: u16,
    /// The timestamp of the packet numbered `highest_seq`.
    pub(super) highest_ts: Option<u32>,
    pub(super) wraps: u64,
    pub(super) frames: FrameAssembly,
    /// Arrival minus send time of the previous marked packet, microseconds.
    pub(super) last_transit_us: Option<i64>,
    pub(super) jitter_us: f64,
    pub(super) freezes: FreezeDetector,
}

impl RemoteTrack {
    pub(super) fn new(from: String, track: String, codec: Codec, decode_audio: bool) -> Self {
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
                seq_gaps: 0,
                max_media_gap_ms: 0.0,
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
            highest_ts: None,
            wraps: 0,
            frames: FrameAssembly::default(),
            last_transit_us: None,
            jitter_us: 0.0,
            freezes: FreezeDetector::default(),
        }
    }

    pub(super) fn on_packet(&mut self, p: &RtpPacket, since_start_ms: u64, arrival_us: u64) {
        let s = &mut self.stats;
        s.packets += 1;
        s.bytes += p.payload.len() as u64;
        s.first_packet_ms.get_or_insert(since_start_ms);
        s.last_packet_ms = Some(since_start_ms);
        match self.first_seq {
            None => {
                self.first_seq = Some(p.sequence_number);
                self.highest_seq = p.sequence_number;
                self.highest_ts = Some(p.timestamp);
            }
            Some(_) if seq_is_newer(p.sequence_number, self.highest_seq) => {
                if p.sequence_number != self.highest_seq.wrapping_add(1) {
                    s.seq_gaps += 1;
                } else if let Some(last_ts) = self.highest_ts {
                    let ticks = p.timestamp.wrapping_sub(last_ts);
                    if ticks < 0x8000_0000 {
                        let ms = f64::from(ticks) * 1000.0 / f64::from(s.codec.clock_rate());
                        s.max_media_gap_ms = s.max_media_gap_ms.max(ms);
                    }
                }
                if p.sequence_number < self.highest_seq {
                    self.wraps += 1;
                }
                self.highest_seq = p.sequence_number;
                self.highest_ts = Some(p.timestamp);
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

    pub(super) fn snapshot(&self) -> RemoteTrackStats {
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
    /// Vitals: the readings its simulated device sent, those it received (as relayed by the
    /// SFU), and messages on the vitals channel that were not a reading.
    pub vitals_sent: Vec<metaclinic_sfu::vitals::Reading>,
    pub vitals_received: Vec<metaclinic_sfu::vitals::RelayedReading>,
    pub vitals_malformed: u64,
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

/// Does this packet carry the start of a video frame?
pub(super) fn frame_starts(codec: Codec, payload: &[u8]) -> bool {
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
pub(super) struct FrameAssembly {
    pub(super) pending: Vec<PendingFrame>,
    /// Timestamps of frames already counted, so that a late duplicate does not count twice.
    pub(super) done: std::collections::VecDeque<u32>,
    pub(super) complete: u64,
    pub(super) incomplete: u64,
}

pub(super) struct PendingFrame {
    pub(super) ts: u32,
    pub(super) first: Option<u16>,
    pub(super) last: Option<u16>,
    pub(super) seqs: Vec<u16>,
    pub(super) age: u32,
}

impl FrameAssembly {
    pub(super) fn on_packet(&mut self, ts: u32, seq: u16, start: bool, marker: bool) {
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
