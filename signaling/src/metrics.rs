//! Prometheus metrics of the signaling service.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Join and access decisions, by outcome (allow, deny) and reason code.
    pub joins: IntCounterVec,
    pub lobby_wait: Histogram,
    pub booking_lookup: Histogram,
    pub booking_errors: IntCounterVec,
    pub ws_sessions: IntGauge,
    pub ws_refused: IntCounterVec,
    pub consultations: IntGauge,
    pub host_actions: IntCounterVec,
    /// Chat lines passed on to the call (refused ones are in `ws_refused`).
    pub chat_messages: IntCounter,
    pub jwks_fetches: IntCounter,
    /// Rooms moved off a lost SFU node, by outcome (moved, no_node).
    pub room_moves: IntCounterVec,
    /// Clients told to reconnect, by cause (drain, room_moved, home_lost, handed_over).
    pub reconnect_hints: IntCounterVec,
    /// Clients connected here whose consultation runs on another replica.
    pub piped_sessions: IntGauge,
    /// Consultations this replica took over from another one's snapshot.
    pub consultations_restored: IntCounter,
    pub draining: IntGauge,
    /// Open TCP connections (WebSockets included).
    pub http_connections: IntGauge,
    /// Accepts that waited because the connection cap was reached.
    pub http_connection_waits: IntCounter,
    /// Refusals counted into a summary record instead of audited one by one, by reason.
    pub refusals_summarised: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("each metric is registered once");
            c
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("static metric"),
            )
        };
        Metrics {
            joins: counter_vec(
                "metaclinic_signaling_joins_total",
                "Join and access decisions, by outcome and reason",
                &["outcome", "reason"],
            ),
            lobby_wait: histogram(
                "metaclinic_signaling_lobby_wait_seconds",
                "Time from entering the lobby to being admitted",
                vec![5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0],
            ),
            booking_lookup: histogram(
                "metaclinic_signaling_booking_lookup_seconds",
                "Latency of appointment reads from the booking system",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            booking_errors: counter_vec(
                "metaclinic_signaling_booking_errors_total",
                "Failed booking-system reads, by code",
                &["code"],
            ),
            ws_sessions: reg(
                &registry,
                IntGauge::new(
                    "metaclinic_signaling_ws_sessions",
                    "Open WebSocket sessions",
                )
                .expect("static metric"),
            ),
            ws_refused: counter_vec(
                "metaclinic_signaling_ws_refused_total",
                "WebSocket messages or sessions refused, by code",
                &["code"],
            ),
            consultations: reg(
                &registry,
                IntGauge::new(
                    "metaclinic_signaling_consultations",
                    "Consultations open on this instance",
                )
                .expect("static metric"),
            ),
            host_actions: counter_vec(
                "metaclinic_signaling_host_actions_total",
                "Host actions, by action and outcome",
                &["action", "outcome"],
            ),
            chat_messages: reg(
                &registry,
                IntCounter::new(
                    "metaclinic_signaling_chat_messages_total",
                    "Chat lines passed on to the people in a call",
                )
                .expect("static metric"),
            ),
            room_moves: counter_vec(
                "metaclinic_signaling_room_moves_total",
                "Rooms placed again because their SFU node was lost, by outcome",
                &["outcome"],
            ),
            reconnect_hints: counter_vec(
                "metaclinic_signaling_reconnect_hints_total",
                "Clients told to reconnect, by cause",
                &["cause"],
            ),
            piped_sessions: reg(
                &registry,
                IntGauge::new(
                    "metaclinic_signaling_piped_sessions",
                    "WebSockets connected here whose consultation runs on another replica",
                )
                .expect("static metric"),
            ),
            consultations_restored: reg(
                &registry,
                IntCounter::new(
                    "metaclinic_signaling_consultations_restored_total",
                    "Consultations continued here from another replica's snapshot",
                )
                .expect("static metric"),
            ),
            draining: reg(
                &registry,
                IntGauge::new(
                    "metaclinic_signaling_draining",
                    "1 while this instance drains (takes no new WebSockets)",
                )
                .expect("static metric"),
            ),
            http_connections: reg(
                &registry,
                IntGauge::new(
                    "metaclinic_signaling_http_connections",
                    "Open TCP connections, WebSockets included",
                )
                .expect("static metric"),
            ),
            http_connection_waits: reg(
                &registry,
                IntCounter::new(
                    "metaclinic_signaling_http_connection_waits_total",
                    "Times the listener stopped accepting because http.max_connections was reached",
                )
                .expect("static metric"),
            ),
            refusals_summarised: counter_vec(
                "metaclinic_signaling_audit_refusals_summarised_total",
                "Refusals of unauthenticated clients counted into a summary audit record, by reason",
                &["reason"],
            ),
            jwks_fetches: reg(
                &registry,
                IntCounter::new("metaclinic_signaling_jwks_fetches_total", "JWKS fetches")
                    .expect("static metric"),
            ),
            registry,
        }
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
