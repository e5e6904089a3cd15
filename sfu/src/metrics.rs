//! Prometheus metrics of an SFU node, and the named reasons for every drop on the packet path.
//!
//! Media threads count into plain per-shard tallies ([`ShardTally`]) and publish them to the
//! shared counters a few times a second, so the packet path touches no shared cache line.

use std::time::{Duration, Instant};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Why a datagram or packet was not processed or forwarded. Every early return on the packet
/// path names one of these; each is a label of `metaclinic_sfu_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than the receive buffer (truncated by the kernel).
    Oversized,
    /// Neither STUN, DTLS nor RTP/RTCP by its first byte (RFC 7983), or empty.
    Unclassifiable,
    /// Looks like STUN but does not parse.
    MalformedStun,
    /// A STUN request whose username names no session here.
    UnknownUfrag,
    /// A STUN request for a session here, failing MESSAGE-INTEGRITY.
    StunIntegrity,
    /// A STUN request for a session here from another agent than its remote description
    /// names (the username's second part is not the client's ufrag).
    StunUsername,
    /// DTLS or RTP from an address no session has verified with STUN.
    UnknownPeer,
    /// RTP or RTCP shorter than its own header says.
    TruncatedRtp,
    /// The forwarding fast path refused an SRTP packet on a stream it carries: a replay, a
    /// packet older than the replay window, or one failing authentication. (rtc's own
    /// refusals, of DTLS records and of packets it carries, are not reported to us.)
    PeerRejected,
    /// The WebRTC stack panicked on this input; the session was closed, the node lives on.
    PeerPanic,
    /// Decrypted RTP for an SSRC that belongs to no published track.
    UnknownSsrc,
    /// Media from a participant without the right to publish.
    NotPermitted,
    /// Padding-only packets (bandwidth probes) are never forwarded.
    Padding,
    /// Video before the first keyframe of a subscription.
    WaitingForKeyframe,
    /// Too old to place in the subscriber's sequence.
    TooOld,
    /// The subscriber has not answered the offer that carries this track yet.
    SubscriberNotReady,
    /// The WebRTC stack refused to send to the subscriber.
    SendFailed,
    /// The publisher is muted by a host.
    Muted,
    /// Video paused for a subscriber whose bandwidth cannot carry it (audio goes on).
    Paused,
    /// Audio the spatial mixer refused (too late, duplicate, a wild sequence jump).
    MixerRejected,
    /// A pose message on the data channel that does not parse (see `spatial::pose`).
    BadPose,
    /// Poses faster than the rate limit (40 per second).
    PoseRate,
    /// A vitals message that does not parse or is implausible (see `vitals`).
    BadVitals,
    /// Vitals from a participant other than the patient, or faster than the rate limit.
    VitalsRefused,
}

impl DropReason {
    pub const ALL: [DropReason; 24] = [
        DropReason::Oversized,
        DropReason::Unclassifiable,
        DropReason::MalformedStun,
        DropReason::UnknownUfrag,
        DropReason::StunIntegrity,
        DropReason::StunUsername,
        DropReason::UnknownPeer,
        DropReason::TruncatedRtp,
        DropReason::PeerRejected,
        DropReason::PeerPanic,
        DropReason::UnknownSsrc,
        DropReason::NotPermitted,
        DropReason::Padding,
        DropReason::WaitingForKeyframe,
        DropReason::TooOld,
        DropReason::SubscriberNotReady,
        DropReason::SendFailed,
        DropReason::Muted,
        DropReason::Paused,
        DropReason::MixerRejected,
        DropReason::BadPose,
        DropReason::PoseRate,
        DropReason::BadVitals,
        DropReason::VitalsRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Unclassifiable => "unclassifiable",
            DropReason::MalformedStun => "malformed_stun",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::StunIntegrity => "stun_integrity",
            DropReason::StunUsername => "stun_username",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::TruncatedRtp => "truncated_rtp",
            DropReason::PeerRejected => "peer_rejected",
            DropReason::PeerPanic => "peer_panic",
            DropReason::UnknownSsrc => "unknown_ssrc",
            DropReason::NotPermitted => "not_permitted",
            DropReason::Padding => "padding",
            DropReason::WaitingForKeyframe => "waiting_for_keyframe",
            DropReason::TooOld => "too_old",
            DropReason::SubscriberNotReady => "subscriber_not_ready",
            DropReason::SendFailed => "send_failed",
            DropReason::Muted => "muted",
            DropReason::Paused => "paused_for_bandwidth",
            DropReason::MixerRejected => "mixer_rejected",
            DropReason::BadPose => "bad_pose",
            DropReason::PoseRate => "pose_rate",
            DropReason::BadVitals => "bad_vitals",
            DropReason::VitalsRefused => "vitals_refused",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

/// The node's metric families, registered in its own registry (several nodes can live in
/// one test process).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    dropped: Vec<IntCounter>,
    pub datagrams_received: IntCounter,
    pub datagrams_sent: IntCounter,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub rtp_packets_received: IntCounter,
    pub rtp_packets_forwarded: IntCounter,
    pub send_batches: IntCounter,
    pub send_messages: IntCounter,
    pub recv_batches: IntCounter,
    pub rooms: IntGauge,
    pub participants: IntGauge,
    pub tracks: IntGaugeVec,
    pub control_requests: IntCounterVec,
    pub control_refused: IntCounterVec,
    pub sessions_closed: IntCounterVec,
    pub nacked_packets: IntCounter,
    pub unanswerable_nacks: IntCounter,
    /// Patient device readings relayed in consultations (values are never logged).
    pub vitals_relayed: IntCounter,
    pub retransmissions: IntCounter,
    pub dominant_speaker_changes: IntCounter,
    pub layer_switches: IntCounterVec,
    /// Keyframe requests (PLI/FIR) from subscribers, and those the node sent publishers.
    pub keyframe_requests: IntCounterVec,
    /// Rooms by kind, sessions by room kind and role (set at scrape time).
    pub rooms_by_kind: IntGaugeVec,
    pub participants_by_role: IntGaugeVec,
    /// Round trip, loss (by direction) and jitter of each session, every quality report.
    pub rtt: Histogram,
    pub loss: HistogramVec,
    pub jitter: Histogram,
    /// Time one shared room's mixer takes for a 20 ms tick, and its listeners per shard.
    pub mixer_tick: Histogram,
    pub mixer_listeners: IntGaugeVec,
    /// Each media thread's busy share of wall time (placement and admission read it).
    pub media_thread_busy: prometheus::GaugeVec,
    /// 1 while the node drains (takes no new rooms).
    pub draining: IntGauge,
    /// Heartbeats to the node registry, by outcome (ok, error).
    pub registry_heartbeats: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric names are static and valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once");
            c
        };
        let dropped_vec = IntCounterVec::new(
            Opts::new(
                "metaclinic_sfu_dropped_total",
                "Datagrams and packets dropped, by reason",
            ),
            &["reason"],
        )
        .expect("static metric");
        registry
            .register(Box::new(dropped_vec.clone()))
            .expect("registered once");
        let dropped = DropReason::ALL
            .iter()
            .map(|r| dropped_vec.with_label_values(&[r.as_str()]))
            .collect();

        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("static metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        Self {
            dropped,
            datagrams_received: counter(
                "metaclinic_sfu_datagrams_received_total",
                "UDP datagrams received",
            ),
            datagrams_sent: counter("metaclinic_sfu_datagrams_sent_total", "UDP datagrams sent"),
            bytes_received: counter(
                "metaclinic_sfu_received_bytes_total",
                "UDP payload bytes received",
            ),
            bytes_sent: counter("metaclinic_sfu_sent_bytes_total", "UDP payload bytes sent"),
            rtp_packets_received: counter(
                "metaclinic_sfu_rtp_packets_received_total",
                "Decrypted RTP packets from publishers",
            ),
            rtp_packets_forwarded: counter(
                "metaclinic_sfu_rtp_packets_forwarded_total",
                "RTP packets forwarded to subscribers (one per subscriber)",
            ),
            send_batches: counter("metaclinic_sfu_send_batches_total", "sendmmsg calls"),
            send_messages: counter(
                "metaclinic_sfu_send_messages_total",
                "UDP messages sent: one per datagram, or per segmented run of datagrams (rtc.udp_gso)",
            ),
            recv_batches: counter(
                "metaclinic_sfu_recv_batches_total",
                "recvmmsg calls that returned datagrams",
            ),
            rooms: gauge("metaclinic_sfu_rooms", "Rooms open on this node"),
            participants: gauge(
                "metaclinic_sfu_participants",
                "Participant sessions open on this node",
            ),
            tracks: gauge_vec(
                "metaclinic_sfu_tracks",
                "Published tracks, by kind",
                &["kind"],
            ),
            control_requests: counter_vec(
                "metaclinic_sfu_control_requests_total",
                "Control API requests, by route and status class",
                &["route", "status"],
            ),
            control_refused: counter_vec(
                "metaclinic_sfu_control_refused_total",
                "Control API requests refused, by error code",
                &["code"],
            ),
            sessions_closed: counter_vec(
                "metaclinic_sfu_sessions_closed_total",
                "Participant sessions ended, by cause",
                &["cause"],
            ),
            nacked_packets: counter(
                "metaclinic_sfu_nacked_packets_total",
                "Packets subscribers asked to be sent again (NACK)",
            ),
            unanswerable_nacks: counter(
                "metaclinic_sfu_nacks_unanswerable_total",
                "Packets subscribers NACKed that the SFU never sent or no longer holds (answered with a keyframe request)",
            ),
            vitals_relayed: counter(
                "metaclinic_sfu_vitals_readings_total",
                "Readings from patients' devices relayed to clinicians in consultations",
            ),
            retransmissions: counter(
                "metaclinic_sfu_retransmissions_total",
                "Packets retransmitted to subscribers from the SFU's send buffer",
            ),
            dominant_speaker_changes: counter(
                "metaclinic_sfu_dominant_speaker_changes_total",
                "Times a room's dominant speaker changed",
            ),
            layer_switches: counter_vec(
                "metaclinic_sfu_layer_switches_total",
                "Video layer changes the bandwidth allocator made for subscribers (a pause counts as down)",
                &["direction"],
            ),
            keyframe_requests: counter_vec(
                "metaclinic_sfu_keyframe_requests_total",
                "Keyframe requests (PLI/FIR): from subscribers, and sent to publishers after coalescing",
                &["direction"],
            ),
            rooms_by_kind: gauge_vec(
                "metaclinic_sfu_rooms_by_kind",
                "Rooms open on this node, by kind (consultation, shared)",
                &["kind"],
            ),
            participants_by_role: gauge_vec(
                "metaclinic_sfu_participants_by_role",
                "Participant sessions, by room kind and role",
                &["kind", "role"],
            ),
            rtt: histogram(
                "metaclinic_sfu_rtt_seconds",
                "Round trip between the node and each participant, per quality report",
                vec![0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0],
            ),
            loss: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "metaclinic_sfu_loss_ratio",
                        "Packet loss per participant and quality report (up: what the node \
                         missed; down: what the participant reported missing)",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
                    &["direction"],
                )
                .expect("static metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("registered once");
                h
            },
            jitter: histogram(
                "metaclinic_sfu_jitter_seconds",
                "Interarrival jitter of what each participant sends, per quality report",
                vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],
            ),
            mixer_tick: histogram(
                "metaclinic_sfu_mixer_tick_seconds",
                "Time one shared room's spatial mixer takes for a 20 ms tick",
                vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05],
            ),
            mixer_listeners: gauge_vec(
                "metaclinic_sfu_mixer_listeners",
                "Listeners in the shared rooms' mixers, by media thread",
                &["shard"],
            ),
            media_thread_busy: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "metaclinic_sfu_media_thread_busy_ratio",
                        "Share of wall time each media thread spent working (not waiting) over its last second; new rooms and participants go where it is lowest, none beyond rooms.max_thread_busy_pct",
                    ),
                    &["shard"],
                )
                .expect("static metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            draining: gauge(
                "metaclinic_sfu_draining",
                "1 while the node drains: no new rooms, existing rooms run to their end",
            ),
            registry_heartbeats: counter_vec(
                "metaclinic_sfu_registry_heartbeats_total",
                "Heartbeats written to the node registry (Redis), by outcome",
                &["outcome"],
            ),
            registry,
        }
    }

    pub fn dropped(&self, reason: DropReason) -> &IntCounter {
        &self.dropped[reason.index()]
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts kept by one media thread between publications.
#[derive(Debug, Default)]
pub struct ShardTally {
    dropped: [u64; DropReason::ALL.len()],
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub rtp_packets_received: u64,
    pub rtp_packets_forwarded: u64,
    pub send_batches: u64,
    pub send_messages: u64,
    pub recv_batches: u64,
    last_flush: Option<Instant>,
}

const FLUSH_EVERY: Duration = Duration::from_millis(200);

impl ShardTally {
    pub fn drop(&mut self, reason: DropReason) {
        self.drop_n(reason, 1);
    }

    pub fn drop_n(&mut self, reason: DropReason, n: u64) {
        self.dropped[reason.index()] += n;
    }

    /// Drops for `reason` not yet published.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Publish to the shared counters if it is time (or `force`).
    pub fn flush(&mut self, metrics: &Metrics, now: Instant, force: bool) {
        if !force
            && self
                .last_flush
                .is_some_and(|t| now.duration_since(t) < FLUSH_EVERY)
        {
            return;
        }
        self.last_flush = Some(now);
        for (i, n) in self.dropped.iter_mut().enumerate() {
            if *n > 0 {
                metrics.dropped[i].inc_by(std::mem::take(n));
            }
        }
        let take = |v: &mut u64, c: &IntCounter| {
            if *v > 0 {
                c.inc_by(std::mem::take(v));
            }
        };
        take(&mut self.datagrams_received, &metrics.datagrams_received);
        take(&mut self.datagrams_sent, &metrics.datagrams_sent);
        take(&mut self.bytes_received, &metrics.bytes_received);
        take(&mut self.bytes_sent, &metrics.bytes_sent);
        take(
            &mut self.rtp_packets_received,
            &metrics.rtp_packets_received,
        );
        take(
            &mut self.rtp_packets_forwarded,
            &metrics.rtp_packets_forwarded,
        );
        take(&mut self.send_batches, &metrics.send_batches);
        take(&mut self.send_messages, &metrics.send_messages);
        take(&mut self.recv_batches, &metrics.recv_batches);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label() {
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn tallies_reach_the_exposition() {
        let m = Metrics::new();
        let mut t = ShardTally::default();
        t.drop(DropReason::UnknownPeer);
        t.drop(DropReason::UnknownPeer);
        t.rtp_packets_forwarded = 5;
        t.flush(&m, Instant::now(), true);
        let text = m.render();
        assert!(
            text.contains("metaclinic_sfu_dropped_total{reason=\"unknown_peer\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("metaclinic_sfu_rtp_packets_forwarded_total 5"),
            "{text}"
        );
    }
}
