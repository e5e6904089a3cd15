//! The bandwidth towards a subscriber on the fast path: what was sent (rtc's send history,
//! by transport-wide sequence number) joined with the subscriber's transport-wide feedback,
//! fed to the SFU's estimator, whose target the allocator reads. The work rtc's congestion
//! control interceptor does when rtc sends the RTP.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, History, convert_twcc};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

use super::super::estimator::SfuEstimator;
use super::super::feedback::ChainShared;

/// Packets never acknowledged are forgotten after this long (a path that stopped reporting).
const PRUNE_HORIZON: Duration = Duration::from_secs(2);

pub(super) struct Congestion {
    sent: History,
    estimator: SfuEstimator,
    shared: Arc<ChainShared>,
}

impl Congestion {
    pub fn new(shared: Arc<ChainShared>, estimator: SfuEstimator) -> Self {
        Congestion {
            sent: History::new(),
            estimator,
            shared,
        }
    }

    /// A packet left: `size` bytes of RTP, numbered `transport_sequence` if the subscriber
    /// reports transport-wide feedback.
    pub fn on_sent(
        &mut self,
        now: Instant,
        ssrc: u32,
        sequence_number: u16,
        transport_sequence: Option<u16>,
        size: usize,
    ) {
        self.sent.add_outgoing(
            ssrc,
            sequence_number,
            transport_sequence.is_some(),
            transport_sequence.unwrap_or_default(),
            size,
            now,
        );
    }

    pub fn on_feedback(&mut self, now: Instant, feedback: &TransportLayerCc) {
        for acknowledgement in convert_twcc(feedback) {
            self.sent.on_twcc_feedback(now, acknowledgement);
        }
        let reports = self.sent.take_reports();
        self.estimator.on_reports(now, &reports);
        self.publish();
    }

    fn publish(&self) {
        let target = self.estimator.target_bitrate().max(0.0) as u64;
        let bandwidth = &self.shared.bandwidth;
        bandwidth.target_bps.store(target, Ordering::Relaxed);
        bandwidth.twcc_seen.store(true, Ordering::Relaxed);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.sent
            .prune_before(now.checked_sub(PRUNE_HORIZON).unwrap_or(now));
        self.estimator.handle_timeout(now);
        if self.shared.bandwidth.twcc_seen.load(Ordering::Relaxed) {
            self.publish();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.estimator.poll_timeout()
    }
}
