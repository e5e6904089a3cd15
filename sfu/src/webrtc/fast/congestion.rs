//! The bandwidth towards a subscriber on the fast path: what was sent (by transport-wide
//! sequence number, `send_records`) joined with the subscriber's transport-wide feedback,
//! fed to the SFU's estimator, whose target the allocator reads. The work rtc's congestion
//! control interceptor does when rtc sends the RTP.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rtc::interceptor::{BandwidthEstimator, PacketReport, convert_twcc};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

use super::super::estimator::SfuEstimator;
use super::super::feedback::ChainShared;
use super::send_records::SendRecords;

pub(super) struct Congestion {
    sent: SendRecords,
    estimator: SfuEstimator,
    shared: Arc<ChainShared>,
    /// Reused for every feedback's reports.
    reports: Vec<PacketReport>,
}

impl Congestion {
    pub fn new(now: Instant, shared: Arc<ChainShared>, estimator: SfuEstimator) -> Self {
        Congestion {
            sent: SendRecords::new(now),
            estimator,
            shared,
            reports: Vec::new(),
        }
    }

    /// A packet of `size` bytes of RTP leaves now; returns its transport-wide sequence number.
    pub fn on_sent(&mut self, now: Instant, ssrc: u32, sequence_number: u16, size: usize) -> u16 {
        self.sent.on_sent(now, ssrc, sequence_number, size)
    }

    pub fn on_feedback(&mut self, now: Instant, feedback: &TransportLayerCc) {
        for acknowledgement in convert_twcc(feedback) {
            self.sent.on_acknowledgement(&acknowledgement);
        }
        self.reports.clear();
        self.sent.take_reports(&mut self.reports);
        self.estimator.on_reports(now, &self.reports);
        self.publish();
    }

    fn publish(&self) {
        let target = self.estimator.target_bitrate().max(0.0) as u64;
        let bandwidth = &self.shared.bandwidth;
        bandwidth.target_bps.store(target, Ordering::Relaxed);
        bandwidth.twcc_seen.store(true, Ordering::Relaxed);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.estimator.handle_timeout(now);
        if self.shared.bandwidth.twcc_seen.load(Ordering::Relaxed) {
            self.publish();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.estimator.poll_timeout()
    }
}
