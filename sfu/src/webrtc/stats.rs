//! What the connection measured: counters, round trip, loss each way.

use super::*;

/// A connection's cumulative counters (see [`Peer::link_counters`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkCounters {
    pub packets_received: u64,
    pub packets_lost: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Packets the remote side NACKed (asked for again), and our retransmissions.
    pub nacked_packets: u64,
    pub retransmissions: u64,
    /// Packets NACKed that were never sent or are no longer held: answered with a keyframe.
    pub unanswerable_nacks: u64,
    /// Worst interarrival jitter of what we receive, milliseconds.
    pub jitter_ms: Option<f64>,
    /// From the remote side's latest receiver reports: round trip and loss it saw.
    pub rtt_ms: Option<f64>,
    pub loss_down_pct: Option<f64>,
}

impl Peer {
    /// Reads the remote side's reception reports on what we send. RFC 3550 §6.4.1: a
    /// report echoes our last sender report's time (LSR) and how long it held it (DLSR);
    /// what is left of the time since is the round trip. The reports' clock is the wall
    /// clock, as rtc and the fast path stamp sender reports. Each report's fraction lost is
    /// kept per stream of ours (rtc 0.21 reads none of it into its statistics).
    pub(super) fn on_reception_reports(&mut self, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        use rtc::rtcp::receiver_report::ReceiverReport;
        use rtc::rtcp::sender_report::SenderReport;
        let Some(ntp) = fast::ntp_now() else {
            return;
        };
        // The middle 32 bits of the NTP time: 16.16 fixed-point seconds.
        let now = (ntp >> 16) as u32;
        for p in packets {
            let any = p.as_any();
            let reports = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                &rr.reports
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                &sr.reports
            } else {
                continue;
            };
            for r in reports {
                let ours = self.outbound.values().any(|o| o.ssrcs.contains(&r.ssrc));
                let room = self.loss_down.len() < crate::srtp::MAX_STREAMS;
                match self.loss_down.iter_mut().find(|(ssrc, _)| *ssrc == r.ssrc) {
                    Some(entry) => entry.1 = r.fraction_lost,
                    None if ours && room => self.loss_down.push((r.ssrc, r.fraction_lost)),
                    None => {}
                }
            }
            for r in reports.iter().filter(|r| r.last_sender_report != 0) {
                let rtt = now.wrapping_sub(r.last_sender_report).wrapping_sub(r.delay);
                // A negative or absurd value (clock step, forged report) is no measurement.
                if rtt < 65_536 * 10 {
                    let ms = f64::from(rtt) * 1000.0 / 65_536.0;
                    let smoothed = self.rtt_ms.map_or(ms, |old| old * 0.8 + ms * 0.2);
                    self.rtt_ms = Some(smoothed);
                    if let Some(fast) = self.fast.as_deref_mut() {
                        fast.set_round_trip(std::time::Duration::from_secs_f64(smoothed / 1000.0));
                    }
                }
            }
        }
    }

    /// The connection's counters so far, from the stack's statistics (RTCP reports and its
    /// own bookkeeping). Cumulative; the caller takes differences over its interval.
    pub fn link_counters(&mut self, now: Instant) -> LinkCounters {
        let report = self.pc.get_stats(now, rtc::statistics::StatsSelector::None);
        let mut c = LinkCounters::default();
        for s in report.inbound_rtp_streams() {
            let r = &s.received_rtp_stream_stats;
            c.packets_received += r.packets_received;
            c.packets_lost += r.packets_lost.max(0) as u64;
            c.bytes_received += s.bytes_received;
            // rtc 0.21 reports jitter in RTP timestamp units (as RTCP carries it).
            let clock = match r.rtp_stream_stats.kind {
                RtpCodecKind::Audio => 48_000.0,
                _ => 90_000.0,
            };
            let jitter_ms = r.jitter / clock * 1000.0;
            c.jitter_ms = Some(c.jitter_ms.unwrap_or(0.0).max(jitter_ms));
        }
        if let Some(fast) = self.fast.as_deref() {
            // The fast path sees every packet received since it started (rtc's statistics
            // only those it carried).
            let r = fast.receive.counters();
            c.packets_received = r.packets_received;
            c.packets_lost = r.packets_lost;
            c.bytes_received = r.bytes_received;
            c.jitter_ms = r.jitter_ms;
        }
        let mut packets_sent = 0;
        for s in report.outbound_rtp_streams() {
            c.bytes_sent += s.sent_rtp_stream_stats.bytes_sent;
            packets_sent += s.sent_rtp_stream_stats.packets_sent;
        }
        // rtc counts only RTX as retransmissions; plain NACK answers show up as packets sent
        // that we never wrote. The fast path counts its own.
        c.retransmissions = packets_sent.saturating_sub(self.rtp_written);
        if let Some(fast) = self.fast.as_deref() {
            let f = fast.counters();
            c.bytes_sent += f.bytes_sent;
            c.retransmissions = f.retransmissions;
        }
        let nacks = &self.chain.nacks;
        c.nacked_packets = nacks.named.load(std::sync::atomic::Ordering::Relaxed);
        c.unanswerable_nacks = nacks
            .unanswerable
            .load(std::sync::atomic::Ordering::Relaxed);
        c.loss_down_pct = self
            .loss_down
            .iter()
            .map(|&(_, fraction)| f64::from(fraction) * 100.0 / 256.0)
            .reduce(f64::max);
        // rtc 0.21 leaves the RTT at zero; we measure it from the reports ourselves.
        c.rtt_ms = self.rtt_ms;
        c
    }
}
