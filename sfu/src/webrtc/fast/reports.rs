//! Sender reports (RFC 3550 §6.4.1) for what the fast path sends: the subscriber's receiver
//! learns the wall clock of our RTP timestamps (lip sync) and echoes the report's time in its
//! receiver reports, from which the SFU measures the round trip (`stats::on_reception_reports`, on the
//! same wall clock).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rtc::rtcp::sender_report::SenderReport;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// What one outgoing stream sent, for its reports.
#[derive(Debug, Default)]
pub(super) struct SenderStats {
    packets: u32,
    octets: u32,
    /// The latest RTP timestamp sent and when.
    latest: Option<(u32, Instant)>,
}

impl SenderStats {
    pub fn on_sent(&mut self, now: Instant, timestamp: u32, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        if self.latest.is_none_or(|(ts, _)| ts != timestamp) {
            self.latest = Some((timestamp, now));
        }
    }

    /// The report for `ssrc` at `now`, if anything was sent: the RTP timestamp is the latest
    /// one sent, moved on by the time since at `clock_rate`.
    pub fn report(&self, now: Instant, ssrc: u32, clock_rate: u32) -> Option<SenderReport> {
        let (timestamp, at) = self.latest?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc,
            ntp_time: ntp_now()?,
            rtp_time: timestamp.wrapping_add((elapsed * f64::from(clock_rate)) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// The wall clock as a 64-bit NTP timestamp (32.32 fixed-point seconds since 1900): our
/// sender reports carry it, and the round trip is measured against it (`stats`).
pub(in crate::webrtc) fn ntp_now() -> Option<u64> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let secs = since.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    Some(secs << 32 | frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_report_counts_what_was_sent_and_extrapolates_the_timestamp() {
        let t0 = Instant::now();
        let mut s = SenderStats::default();
        assert!(s.report(t0, 1, 90_000).is_none(), "nothing sent yet");
        s.on_sent(t0, 3000, 1000);
        s.on_sent(t0 + Duration::from_millis(1), 3000, 500);
        s.on_sent(t0 + Duration::from_millis(33), 6000, 1000);
        let r = s
            .report(t0 + Duration::from_millis(133), 7, 90_000)
            .unwrap();
        assert_eq!((r.ssrc, r.packet_count, r.octet_count), (7, 3, 2500));
        assert_eq!(r.rtp_time, 6000 + 9000);
        let unix = (r.ntp_time >> 32) - NTP_UNIX_OFFSET;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(wall.abs_diff(unix) <= 1);
    }
}
