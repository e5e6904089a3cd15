//! What a publisher sends, on the fast path (issue 13): once a stream's first packet has
//! come through rtc (which opens its track and learns its simulcast layer), the SFU
//! authenticates and decrypts the stream's packets itself (`crate::srtp`), in place, into
//! reused slabs, and hands their payloads on without copying them again.
//!
//! What rtc's receive-side interceptors did happens here for every packet, whichever way it
//! came: transport-wide feedback for the publisher's estimator (`twcc`), NACKs for missing
//! video, receiver reports with loss, jitter and the round trip's echo (`stream`), and the
//! connection's receive statistics.

mod header;
mod stream;
mod twcc;

use std::time::{Duration, Instant};

use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};

use super::datagrams::Datagrams;
use crate::media::{Codec, MediaKind, RtpPacket};
use crate::srtp::{MasterKey, SrtpError, SrtpReceiver};
use crate::webrtc::InboundId;
use header::ReceivedHeader;
use stream::ReceivedStream;
use twcc::TwccRecorder;

/// How often transport-wide feedback and NACKs go out (rtc's and libwebrtc's interval), and
/// receiver reports.
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Streams (SSRCs) one connection receives on, at most: a publisher's audio and three
/// simulcast layers of a camera and of a screen, with room to spare.
const MAX_STREAMS: usize = crate::srtp::MAX_STREAMS;
/// Payload types one stream is known to carry.
const MAX_PAYLOAD_TYPES: usize = 4;
/// Reception report blocks in one receiver report (RFC 3550 §6.4.2: a 5-bit count).
const MAX_BLOCKS: usize = 31;
/// The received packets' slabs: a video stream's payloads stay referenced while subscribers
/// may resend them (`engine::NACK_HISTORY` packets), so its slabs come free in the order
/// they were filled; 64 slabs of 4 KiB hold that for a 2.5 Mbit/s camera. A slab lives as
/// long as its last packet, so smaller slabs hold less past what the histories need.
const SLAB_BYTES: usize = 4 * 1024;
const MAX_SLABS: usize = 64;
/// Voice is never held for resending: its own few slabs come free as soon as the packets
/// are sent on, and a video slab is not kept alive by the voice packets between its frames.
const VOICE_SLABS: usize = 4;

/// The negotiated header extension ids the fast path reads.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::webrtc) struct ExtensionIds {
    pub audio_level: Option<u8>,
    pub transport_cc: Option<u8>,
}

/// Where one SSRC's packets go: its track, its simulcast layer, and its payload types'
/// codecs.
struct Route {
    ssrc: u32,
    inbound: InboundId,
    layer: u8,
    payload_types: [Option<(u8, Codec)>; MAX_PAYLOAD_TYPES],
}

impl Route {
    fn codec(&self, payload_type: u8) -> Option<Codec> {
        self.payload_types
            .iter()
            .flatten()
            .find(|(pt, _)| *pt == payload_type)
            .map(|&(_, codec)| codec)
    }
}

/// A packet's arrival, as the receive statistics and feedback need it.
#[derive(Debug, Clone, Copy)]
pub(in crate::webrtc) struct Arrival {
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub size: usize,
    pub transport_sequence: Option<u16>,
    pub codec: Codec,
}

/// What became of a datagram offered to the fast path.
#[derive(Debug)]
pub(in crate::webrtc) enum Receive {
    /// Not a stream the fast path carries yet, or not one it could open: rtc takes it.
    NotOurs,
    /// A replay, or a packet that authenticated but is not RTP we can use: dropped.
    Dropped,
    Media {
        inbound: InboundId,
        layer: u8,
        packet: RtpPacket,
    },
}

/// The receive side's statistics, for the connection's.
#[derive(Debug, Default, Clone, Copy)]
pub(in crate::webrtc) struct ReceiveCounters {
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
    pub jitter_ms: Option<f64>,
}

pub(in crate::webrtc) struct FastReceive {
    srtp: SrtpReceiver,
    start: Instant,
    routes: Vec<Route>,
    streams: Vec<ReceivedStream>,
    twcc: TwccRecorder,
    /// Video's slabs, and voice's.
    buffers: Datagrams,
    voice_buffers: Datagrams,
    /// The SSRC our feedback and reports are sent from.
    sender_ssrc: u32,
    next_feedback: Instant,
    next_report: Instant,
    /// Scratch for one stream's missing sequence numbers.
    missing: Vec<u16>,
    /// Packets refused since the last [`FastReceive::take_rejected`]: replays, packets older
    /// than the replay window, and forgeries on a stream this side carries.
    rejected: u64,
}

impl FastReceive {
    /// Decrypts with the remote side's key.
    pub fn new(now: Instant, remote_key: &MasterKey) -> Result<Self, SrtpError> {
        Ok(FastReceive {
            srtp: SrtpReceiver::new(remote_key)?,
            start: now,
            routes: Vec::new(),
            streams: Vec::new(),
            twcc: TwccRecorder::new(now),
            buffers: Datagrams::new(SLAB_BYTES, MAX_SLABS),
            voice_buffers: Datagrams::new(SLAB_BYTES, VOICE_SLABS),
            sender_ssrc: rand::random(),
            next_feedback: now + FEEDBACK_INTERVAL,
            next_report: now + REPORT_INTERVAL,
            missing: Vec::new(),
            rejected: 0,
        })
    }

    /// From now on `ssrc`'s packets with `payload_type` (carrying `codec`) come through
    /// here: they are layer `layer` of `inbound`.
    pub fn route(
        &mut self,
        ssrc: u32,
        inbound: InboundId,
        layer: u8,
        payload_type: u8,
        codec: Codec,
    ) {
        let route = match self.routes.iter_mut().position(|r| r.ssrc == ssrc) {
            Some(i) => &mut self.routes[i],
            None if self.routes.len() < MAX_STREAMS => {
                self.routes.push(Route {
                    ssrc,
                    inbound,
                    layer,
                    payload_types: [None; MAX_PAYLOAD_TYPES],
                });
                let last = self.routes.len() - 1;
                &mut self.routes[last]
            }
            None => return,
        };
        route.inbound = inbound;
        route.layer = layer;
        // rtc opened this stream's packets so far: ours continue from the last of them
        // (its rollover counter included).
        if let Some(stream) = self.streams.iter().find(|s| s.ssrc == ssrc) {
            let _ = self.srtp.resume(ssrc, stream.extended_max());
        }
        if route.codec(payload_type).is_none()
            && let Some(free) = route.payload_types.iter_mut().find(|p| p.is_none())
        {
            *free = Some((payload_type, codec));
        }
    }

    /// `inbound` closed: its streams go back to rtc, and their statistics are dropped.
    pub fn forget(&mut self, inbound: InboundId) {
        let gone: Vec<u32> = self
            .routes
            .iter()
            .filter(|r| r.inbound == inbound)
            .map(|r| r.ssrc)
            .collect();
        self.routes.retain(|r| r.inbound != inbound);
        self.streams.retain(|s| !gone.contains(&s.ssrc));
    }

    /// Offers a datagram (SRTP) from the remote side.
    pub fn receive(&mut self, now: Instant, data: &[u8], ids: ExtensionIds) -> Receive {
        let (Some(&second), Some(ssrc)) = (data.get(1), data.get(8..12)) else {
            return Receive::NotOurs;
        };
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        let Some(route) = self.routes.iter().find(|r| r.ssrc == ssrc) else {
            return Receive::NotOurs;
        };
        let Some(codec) = route.codec(second & 0x7f) else {
            return Receive::NotOurs;
        };
        let (inbound, layer) = (route.inbound, route.layer);
        let buffers = match codec.kind() {
            MediaKind::Audio => &mut self.voice_buffers,
            MediaKind::Video => &mut self.buffers,
        };
        let buffer = buffers.buffer(data.len());
        buffer.extend_from_slice(data);
        let plain_len = match self.srtp.unprotect(&mut buffer[..]) {
            Ok(len) => len,
            Err(SrtpError::Replayed | SrtpError::TooOld) => {
                buffer.clear();
                self.rejected += 1;
                return Receive::Dropped;
            }
            // Every stream routed here was resumed from rtc's index: a packet that fails
            // to authenticate is forged or damaged. rtc still decides (and drops it).
            Err(SrtpError::Authentication) => {
                buffer.clear();
                self.rejected += 1;
                return Receive::NotOurs;
            }
            Err(_) => {
                buffer.clear();
                return Receive::NotOurs;
            }
        };
        let plain = &buffer[..plain_len];
        let (Some(h), size) = (ReceivedHeader::parse(plain), plain_len) else {
            buffer.clear();
            return Receive::Dropped;
        };
        let Some(end) = h.payload_end(plain) else {
            buffer.clear();
            return Receive::Dropped;
        };
        let audio_level = match ids.audio_level {
            Some(id) if codec == Codec::Opus => h
                .extension(plain, id)
                .and_then(|v| v.first())
                .map(|b| b & 0x7f),
            _ => None,
        };
        let transport_sequence = ids
            .transport_cc
            .and_then(|id| h.extension(plain, id))
            .and_then(|v| Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?)));
        let mut payload = buffer.split_to(end);
        buffer.clear();
        bytes::Buf::advance(&mut payload, h.len);
        self.record(
            now,
            Arrival {
                ssrc,
                sequence_number: h.sequence_number,
                timestamp: h.timestamp,
                size,
                transport_sequence,
                codec,
            },
        );
        Receive::Media {
            inbound,
            layer,
            packet: RtpPacket {
                ssrc,
                sequence_number: h.sequence_number,
                timestamp: h.timestamp,
                payload_type: h.payload_type,
                marker: h.marker,
                payload: payload.freeze(),
                audio_level,
            },
        }
    }

    /// A packet arrived, through here or through rtc: for feedback, NACKs and statistics.
    pub fn record(&mut self, now: Instant, a: Arrival) {
        if let Some(seq) = a.transport_sequence {
            self.twcc.record(now, seq, a.ssrc);
            if self.twcc.waiting() >= twcc::EAGER {
                self.next_feedback = self.next_feedback.min(now);
            }
        }
        let i = match self.streams.iter().position(|s| s.ssrc == a.ssrc) {
            Some(i) => i,
            None if self.streams.len() < MAX_STREAMS => {
                let nackable = a.codec.kind() == MediaKind::Video;
                self.streams.push(ReceivedStream::new(
                    a.ssrc,
                    a.codec.clock_rate(),
                    a.sequence_number,
                    nackable,
                ));
                self.streams.len() - 1
            }
            None => return,
        };
        let since_start = now.saturating_duration_since(self.start).as_secs_f64();
        self.streams[i].on_packet(since_start, a.sequence_number, a.timestamp, a.size);
    }

    /// The publisher's sender report for `ssrc`: echoed in our receiver reports.
    pub fn on_sender_report(&mut self, now: Instant, ssrc: u32, ntp_time: u64) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            s.on_sender_report(now, ntp_time);
        }
    }

    pub fn poll_timeout(&self) -> Instant {
        self.next_feedback.min(self.next_report)
    }

    /// The RTCP due at `now`, into `out`: transport-wide feedback and NACKs every 100 ms
    /// (sooner when much is waiting), receiver reports every second.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Box<dyn rtc::rtcp::Packet>>) {
        if now >= self.next_feedback {
            self.next_feedback = now + FEEDBACK_INTERVAL;
            if let Some(cc) = self.twcc.feedback(self.sender_ssrc) {
                out.push(Box::new(cc));
            }
            for s in &mut self.streams {
                self.missing.clear();
                s.missing(&mut self.missing);
                if !self.missing.is_empty() {
                    out.push(Box::new(TransportLayerNack {
                        sender_ssrc: self.sender_ssrc,
                        media_ssrc: s.ssrc,
                        nacks: nack_pairs_from_sequence_numbers(&self.missing),
                    }));
                }
            }
        }
        if now >= self.next_report {
            self.next_report = now + REPORT_INTERVAL;
            self.buffers.release_spare(super::SPARE_SLABS);
            for streams in self.streams.chunks_mut(MAX_BLOCKS) {
                out.push(Box::new(ReceiverReport {
                    ssrc: self.sender_ssrc,
                    reports: streams.iter_mut().map(|s| s.report(now)).collect(),
                    ..Default::default()
                }));
            }
        }
    }

    /// Packets refused since the last call (see `rejected`).
    pub fn take_rejected(&mut self) -> u64 {
        std::mem::take(&mut self.rejected)
    }

    pub fn counters(&self) -> ReceiveCounters {
        let mut c = ReceiveCounters::default();
        for s in &self.streams {
            c.packets_received += s.received;
            c.bytes_received += s.bytes;
            c.packets_lost += s.lost();
            c.jitter_ms = Some(c.jitter_ms.unwrap_or(0.0).max(s.jitter_ms()));
        }
        c
    }
}
