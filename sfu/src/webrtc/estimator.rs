//! The SFU's bandwidth estimate towards a subscriber: GCC (rtc's), floored by what the
//! subscriber demonstrably receives.
//!
//! GCC's loss half cuts its target by a fifth every 200 ms while the loss it averages stays
//! above 10%. A layer switch takes a few hundred milliseconds to relieve a line, and in that
//! time the cuts run the target to its floor, far below what the line still carries; the
//! allocator would then pause video on a line that carries the middle layer well. What the
//! transport-wide feedback reports as arrived over the last second is a capacity the line
//! has just proven, so the estimate never goes below most of it.

use std::time::Instant;

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport};

use super::delivered::DeliveredRate;

/// The share of the delivered rate the estimate keeps as its floor.
const DELIVERED_FLOOR: f64 = 0.85;
/// How fast the one-way delay baseline forgets an old minimum (ms per second), so that a
/// route change does not leave a stale baseline behind.
const BASELINE_DRIFT_MS_PER_S: f64 = 5.0;

pub(super) struct SfuEstimator {
    gcc: Gcc,
    delivered: DeliveredRate,
    floor: f64,
    target: f64,
    /// One-way delay (receiver clock minus our clock, so with an unknown offset) of the
    /// latest packet, and its lowest recent value: the difference is the queue building up
    /// on the path, the clearest sign of congestion there is.
    latest_delay_ms: Option<f64>,
    baseline_ms: Option<(f64, Instant)>,
    epoch: Instant,
    queue_delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
    delivered_out: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SfuEstimator {
    /// `queue_delay` receives the queueing delay on the path, in milliseconds, and
    /// `delivered` the rate reported as arrived, in bits per second.
    pub fn new(
        initial: f64,
        min: f64,
        max: f64,
        queue_delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
        delivered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let epoch = Instant::now();
        SfuEstimator {
            gcc: Gcc::new(initial, min, max),
            delivered: DeliveredRate::new(epoch),
            floor: min,
            target: initial,
            latest_delay_ms: None,
            baseline_ms: None,
            epoch,
            queue_delay,
            delivered_out: delivered,
        }
    }

    fn on_delay(&mut self, now: Instant, r: &PacketReport) {
        let Some(arrival) = r.arrival else { return };
        let departure = r.departure.saturating_duration_since(self.epoch);
        let d = arrival.as_secs_f64() * 1000.0 - departure.as_secs_f64() * 1000.0;
        self.latest_delay_ms = Some(d);
        let base = match self.baseline_ms {
            Some((b, at)) => {
                let drifted = b + BASELINE_DRIFT_MS_PER_S * now.duration_since(at).as_secs_f64();
                drifted.min(d)
            }
            None => d,
        };
        self.baseline_ms = Some((base, now));
    }

    /// How far the latest packet's delay is above the lowest recent one.
    pub fn queue_delay_ms(&self) -> Option<f64> {
        Some(self.latest_delay_ms? - self.baseline_ms?.0).map(|q| q.max(0.0))
    }

    fn update(&mut self, now: Instant) {
        let delivered = self.delivered.bits_per_second(now).unwrap_or(0.0);
        self.delivered_out
            .store(delivered as u64, std::sync::atomic::Ordering::Relaxed);
        self.target = self
            .gcc
            .target_bitrate()
            .max(delivered * DELIVERED_FLOOR)
            .max(self.floor);
    }
}

impl BandwidthEstimator for SfuEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        for r in reports.iter().filter(|r| r.arrived) {
            self.delivered.add(now, r.size);
            self.on_delay(now, r);
        }
        if let Some(q) = self.queue_delay_ms() {
            self.queue_delay
                .store(q as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.gcc.on_reports(now, reports);
        self.update(now);
    }

    fn target_bitrate(&self) -> f64 {
        self.target
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.gcc.handle_timeout(now);
        self.update(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.gcc.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.gcc.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
    use std::time::Duration;

    fn report(id: u64, arrived: bool, departure: Instant) -> PacketReport {
        PacketReport {
            ssrc: 1,
            id,
            rtp_sequence_number: id as u16,
            is_twcc: true,
            twcc_sequence_number: id as u16,
            size: 1200,
            arrived,
            departure,
            arrival: arrived.then(|| Duration::from_millis(id)),
            ecn: Ecn::NotEct,
        }
    }

    #[test]
    fn heavy_loss_does_not_push_the_estimate_below_what_arrives() {
        let t0 = Instant::now();
        let mut e = SfuEstimator::new(
            1_000_000.0,
            64_000.0,
            20_000_000.0,
            Default::default(),
            Default::default(),
        );
        // Four seconds of 40% loss while 500 kbit/s still arrive (52 packets of 1200 bytes
        // per second get through).
        let mut id = 0;
        let mut now = t0;
        for _ in 0..40 {
            now += Duration::from_millis(100);
            let batch: Vec<PacketReport> = (0..9)
                .map(|i| {
                    id += 1;
                    report(id, i % 5 >= 2, now)
                })
                .collect();
            e.on_reports(now, &batch);
        }
        let target = e.target_bitrate();
        let delivered = e.delivered.bits_per_second(now).unwrap();
        assert!(
            e.gcc.target_bitrate() < target,
            "GCC alone falls further: {} vs {target}",
            e.gcc.target_bitrate()
        );
        assert!(
            target >= delivered * DELIVERED_FLOOR * 0.99,
            "{target} vs delivered {delivered}"
        );
    }

    #[test]
    fn a_growing_queue_shows_as_queue_delay() {
        let t0 = Instant::now();
        let q = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut e = SfuEstimator::new(
            1_000_000.0,
            64_000.0,
            20_000_000.0,
            q.clone(),
            Default::default(),
        );
        e.epoch = t0;
        // Packets every 10 ms; from the 50th on each waits 5 ms longer than the one before.
        for i in 0..100u64 {
            let sent = t0 + Duration::from_millis(i * 10);
            let queued = i.saturating_sub(50) * 5;
            let mut r = report(i, true, sent);
            r.arrival = Some(Duration::from_millis(i * 10 + 20 + queued));
            e.on_reports(sent, &[r]);
        }
        let got = q.load(std::sync::atomic::Ordering::Relaxed);
        assert!((240..=250).contains(&got), "queue delay {got} ms");
    }
}
