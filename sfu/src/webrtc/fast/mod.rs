//! The forwarding fast path (issue 13): once DTLS is up, the SFU writes the RTP it sends to a
//! subscriber itself instead of handing each packet to rtc's pipeline. A packet's header is
//! written straight into its datagram, the payload copied after it, and the whole protected
//! in place with the SFU's own SRTP (`crate::srtp`), keyed from the DTLS export.
//!
//! What rtc's interceptors did for those packets happens here, per connection: answering
//! NACKs from a resend history (through the [`NackPolicy`]), transport-wide sequence numbers
//! and the send-side bandwidth estimate over the subscriber's feedback ([`Congestion`]), and
//! sender reports. What a publisher sends comes in the same way (`receive`): after a
//! stream's first packet, the SFU opens its packets itself and sends the feedback, NACKs and
//! receiver reports rtc's interceptors sent. rtc keeps ICE, DTLS, SCTP, negotiation, RTCP's
//! own transport, and each stream's first packet (which opens its track).

mod congestion;
mod datagrams;
mod header;
mod history;
mod receive;
mod reports;
mod send_records;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

use super::Transmit;
use super::estimator::SfuEstimator;
use super::feedback::ChainShared;
use super::nack_policy::NackPolicy;
use crate::srtp::{MasterKey, SrtpError, SrtpSender};
use congestion::Congestion;
use datagrams::Datagrams;
pub(super) use header::HeaderFields;
use header::{MAX_HEADER, set_transport_sequence, write_header};
use history::ResendHistory;
pub(super) use receive::{Arrival, ExtensionIds, FastReceive, Receive};
use reports::SenderStats;
pub(super) use reports::ntp_now;

/// How often each stream's sender report goes out (rtc's own default).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Datagrams waiting for the media thread's next flush, at most: beyond, a packet is refused
/// (the fan-out counts it as `send_failed`) rather than the node's memory taken.
const MAX_QUEUED: usize = 1024;
/// SSRCs one connection sends on, at most (the SRTP sender's own bound).
const MAX_STREAMS: usize = crate::srtp::MAX_STREAMS;
/// Free slabs each side keeps past a burst (`Datagrams::release_spare`).
const SPARE_SLABS: usize = 2;

/// What the fast path counted, for the connection's statistics.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FastCounters {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub retransmissions: u64,
}

/// One SSRC we send on.
struct SentStream {
    ssrc: u32,
    clock_rate: u32,
    /// Only for streams the subscriber may NACK (video): holding a voice's packets would
    /// keep their buffers for nothing.
    history: Option<ResendHistory>,
    stats: SenderStats,
}

/// RTCP the interceptor chain hands to the fast path (see `feedback::DeliverFeedback`).
#[derive(Debug)]
pub(super) enum FastFeedback {
    Nack(TransportLayerNack),
    TransportCc(TransportLayerCc),
}

pub(super) struct FastPath {
    srtp: SrtpSender,
    tag_len: usize,
    /// Where media goes: the selected candidate pair's remote address, and whether over
    /// ICE-TCP.
    to: Option<(SocketAddr, bool)>,
    streams: Vec<SentStream>,
    congestion: Congestion,
    nacks: NackPolicy,
    out: VecDeque<Transmit>,
    datagrams: Datagrams,
    next_report: Instant,
    history_size: u16,
    /// How long sent video is held for NACKs: three round trips (`history::resend_age`).
    resend_age: Duration,
    counters: FastCounters,
    /// What the remote side sends.
    pub receive: FastReceive,
}

impl FastPath {
    /// `key` protects what we send, `remote_key` opens what we receive.
    pub fn new(
        now: Instant,
        key: &MasterKey,
        remote_key: &MasterKey,
        shared: Arc<ChainShared>,
        estimator: SfuEstimator,
        history_size: u16,
    ) -> Result<Self, SrtpError> {
        Ok(FastPath {
            srtp: SrtpSender::new(key)?,
            tag_len: key.profile().tag_len(),
            to: None,
            streams: Vec::new(),
            congestion: Congestion::new(now, shared.clone(), estimator),
            nacks: NackPolicy::new(shared),
            out: VecDeque::new(),
            datagrams: Datagrams::default(),
            next_report: now + REPORT_INTERVAL,
            history_size,
            resend_age: history::resend_age(None),
            counters: FastCounters::default(),
            receive: FastReceive::new(now, remote_key)?,
        })
    }

    /// The path's round trip, measured from the subscriber's receiver reports: how long
    /// sent video stays resendable follows it.
    pub fn set_round_trip(&mut self, rtt: Duration) {
        self.resend_age = history::resend_age(Some(rtt));
    }

    pub fn set_destination(&mut self, to: SocketAddr, tcp: bool) {
        self.to = Some((to, tcp));
    }

    pub fn has_destination(&self) -> bool {
        self.to.is_some()
    }

    pub fn counters(&self) -> FastCounters {
        self.counters
    }

    /// Sends one packet: `fields` for its header, `payload` after it. `resendable`: the
    /// stream answers NACKs (video).
    pub fn send(
        &mut self,
        now: Instant,
        fields: &HeaderFields,
        clock_rate: u32,
        resendable: bool,
        payload: &Bytes,
    ) -> bool {
        if self.to.is_none() || self.out.len() >= MAX_QUEUED {
            return false;
        }
        let mut header = [0u8; MAX_HEADER];
        let Some((header_len, transport_cc_at)) = write_header(&mut header, fields) else {
            return false;
        };
        let Some(stream) = self.stream(fields.ssrc, clock_rate, resendable) else {
            return false;
        };
        let size = header_len + payload.len();
        if let Some(at) = transport_cc_at {
            // Only packets numbered for the subscriber's feedback are recorded for it.
            let sequence = self
                .congestion
                .on_sent(now, fields.ssrc, fields.sequence_number, size);
            set_transport_sequence(&mut header, at, sequence);
        }
        let header = &header[..header_len];
        let stream = &mut self.streams[stream];
        if let Some(history) = &mut stream.history {
            history.keep(
                now,
                self.resend_age,
                fields.sequence_number,
                header,
                payload,
            );
        }
        stream.stats.on_sent(now, fields.timestamp, payload.len());
        self.nacks.record_sent(fields.ssrc, fields.sequence_number);
        self.transmit(header, payload)
    }

    /// The index of `ssrc`'s stream, added on its first packet.
    fn stream(&mut self, ssrc: u32, clock_rate: u32, resendable: bool) -> Option<usize> {
        let i = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None if self.streams.len() < MAX_STREAMS => {
                self.streams.push(SentStream {
                    ssrc,
                    clock_rate,
                    history: resendable.then(|| ResendHistory::new(self.history_size)),
                    stats: SenderStats::default(),
                });
                self.streams.len() - 1
            }
            None => return None,
        };
        Some(i)
    }

    /// Protects `header` + `payload` into a datagram for the destination.
    fn transmit(&mut self, header: &[u8], payload: &[u8]) -> bool {
        let Some((to, tcp)) = self.to else {
            return false;
        };
        if self.out.len() >= MAX_QUEUED {
            return false;
        }
        let len = header.len() + payload.len();
        let tagged = len + self.tag_len;
        let buffer = self.datagrams.buffer(tagged);
        buffer.extend_from_slice(header);
        buffer.extend_from_slice(payload);
        buffer.resize(tagged, 0);
        let Ok(protected) = self.srtp.protect(buffer, len) else {
            buffer.clear();
            return false;
        };
        let data = buffer.split_to(protected);
        self.counters.packets_sent += 1;
        self.counters.bytes_sent += protected as u64;
        self.out.push_back(Transmit { to, data, tcp });
        true
    }

    /// Forgets a stream we stopped sending (a track removed): its resend history, its
    /// reports, and its SRTP state, making room for others.
    pub fn retire(&mut self, ssrc: u32) {
        self.streams.retain(|s| s.ssrc != ssrc);
        self.nacks.forget(ssrc);
        self.srtp.retire(ssrc);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Acts on RTCP from the subscriber. Adds to `keyframes` the SSRCs a NACK named packets
    /// of that can never be resent: the caller asks for a keyframe instead.
    pub fn on_feedback(&mut self, now: Instant, feedback: FastFeedback, keyframes: &mut Vec<u32>) {
        match feedback {
            FastFeedback::TransportCc(cc) => self.congestion.on_feedback(now, &cc),
            FastFeedback::Nack(nack) => {
                self.nacks.refill(now);
                let (allowed, unanswerable) = self.nacks.allow(now, &nack);
                if unanswerable && !keyframes.contains(&nack.media_ssrc) {
                    keyframes.push(nack.media_ssrc);
                }
                self.resend(nack.media_ssrc, &allowed);
            }
        }
    }

    fn resend(&mut self, ssrc: u32, sequence_numbers: &[u16]) {
        let Some(i) = self.streams.iter().position(|s| s.ssrc == ssrc) else {
            return;
        };
        for &seq in sequence_numbers {
            let Some(packet) = self.streams[i].history.as_ref().and_then(|h| h.get(seq)) else {
                continue;
            };
            let mut header = [0u8; MAX_HEADER];
            let len = packet.header().len();
            header[..len].copy_from_slice(packet.header());
            let payload = packet.payload().clone();
            if self.transmit(&header[..len], &payload) {
                self.counters.retransmissions += 1;
            }
        }
    }

    pub fn poll_timeout(&self) -> Instant {
        let next = self.next_report.min(self.receive.poll_timeout());
        match self.congestion.poll_timeout() {
            Some(t) => t.min(next),
            None => next,
        }
    }

    /// Runs the estimator's timers; returns the RTCP due (sent through rtc, which protects
    /// RTCP): sender reports for what we send, feedback and reports for what we receive.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Box<dyn rtc::rtcp::Packet>> {
        self.congestion.handle_timeout(now);
        let mut out: Vec<Box<dyn rtc::rtcp::Packet>> = Vec::new();
        self.receive.handle_timeout(now, &mut out);
        if now >= self.next_report {
            self.next_report = now + REPORT_INTERVAL;
            self.datagrams.release_spare(SPARE_SLABS);
            for s in &self.streams {
                if let Some(report) = s.stats.report(now, s.ssrc, s.clock_rate) {
                    out.push(Box::new(report));
                }
            }
        }
        out
    }
}
