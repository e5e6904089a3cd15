//! What the outbox and its workers count, by destination (a webhook endpoint's name, or
//! "fhir" for the FHIR write-back).

use prometheus::{IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct DeliveryMetrics {
    /// Events a destination took (2xx), by endpoint.
    pub delivered: IntCounterVec,
    /// Failed attempts that will be tried again, by endpoint and reason (network, timeout,
    /// http_4xx, http_5xx, outbox).
    pub retried: IntCounterVec,
    /// Events given up, by endpoint and reason (outbox_full, expired, rejected; for vitals
    /// Observations also no_encounter, outbox_unavailable).
    pub dropped: IntCounterVec,
}

impl DeliveryMetrics {
    pub fn new(registry: &Registry) -> DeliveryMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(v.clone()))
                .expect("each metric is registered once");
            v
        };
        DeliveryMetrics {
            delivered: vec(
                "metaclinic_signaling_webhooks_delivered_total",
                "Events delivered, by endpoint (\"fhir\": the FHIR write-back)",
                &["endpoint"],
            ),
            retried: vec(
                "metaclinic_signaling_webhooks_retried_total",
                "Failed deliveries to be tried again, by endpoint and reason",
                &["endpoint", "reason"],
            ),
            dropped: vec(
                "metaclinic_signaling_webhooks_dropped_total",
                "Events given up, by endpoint and reason",
                &["endpoint", "reason"],
            ),
        }
    }
}
