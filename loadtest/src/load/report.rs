//! A run's report: the JSON (`--json`; its first fields are the stable ones named in the
//! load-testing issue) and the summary table printed at the end.

use serde::Serialize;

use super::window::{Figures, Sample};

/// One step of a ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub step: usize,
    pub rooms: usize,
    pub participants: usize,
    pub join_failures: usize,
    pub loss_pct: f64,
    pub latency_ms_p99: f64,
    pub sfu_cpu_pct: Option<f64>,
    /// Why this step broke the run's quality bar, if it did.
    pub broke: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub participants: usize,
    pub duration_s: f64,
    pub join_ms_p50: f64,
    pub join_ms_p95: f64,
    pub join_ms_p99: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    pub loss_pct: f64,
    /// SFU CPU time per packet it delivered to the run's participants. `null` when the
    /// target does not expose its CPU.
    pub cpu_us_per_fwd_pkt: Option<f64>,
    /// The server side's resident memory grown per participant in the call.
    pub rss_kb_per_participant: Option<f64>,
    /// Participants that could not join or whose call ended before the run let them go.
    pub failures: usize,

    pub target: String,
    /// Where server CPU and memory come from: `proc` or `prometheus`.
    pub server_figures_from: String,
    pub rooms: usize,
    pub video_kbps: u32,
    /// Video sent as three simulcast layers.
    pub simulcast: bool,
    pub joins_measured: usize,
    pub received_pkts: u64,
    pub lost_pkts: u64,
    pub fwd_pkts_per_s: f64,
    pub jitter_ms: f64,
    pub nacks: u64,
    pub retransmissions: u64,
    pub freezes: u64,
    pub freeze_ms: u64,
    pub speaker_changes: u64,
    pub sfu_cpu_pct: Option<f64>,
    pub signaling_cpu_pct: Option<f64>,
    pub server_rss_kb: Option<u64>,
    pub tool_cpu_pct: f64,
    /// The load tool's own CPU per participant, percent of one core.
    pub tool_cpu_pct_per_participant: f64,
    pub tool_rss_kb: u64,
    /// Media frames the tool's threads were too late to send: above zero, the tool (not the
    /// servers) was short of CPU, and more `--client-threads` or a quieter machine are needed.
    pub tool_frames_skipped: u64,
    pub failure_reasons: Vec<String>,
    /// Ramp only: each step and the last one that held the quality bar.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<RampStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_good_step: Option<RampStep>,
    /// Ramp only: why it stopped (a broken quality bar, or the participant cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp_stopped: Option<String>,
    /// Join times of every joiner, milliseconds (the HTML's scatter plot).
    pub join_ms: Vec<f64>,
    /// Latency distribution: (upper bound ms, samples) buckets.
    pub latency_ms_histogram: Vec<(f64, u64)>,
    pub timeline: Vec<Sample>,
}

/// The p-quantile of sorted values (nearest rank); 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Latency buckets for the plot: ten per decade from 0.05 ms, as (upper bound ms, samples).
pub fn latency_buckets(f: &Figures) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    if f.latency_us.is_empty() {
        return out;
    }
    let max_us = f.latency_us.max();
    let mut lo_us = 0u64;
    for k in 1.. {
        let hi_ms = 0.05 * 10f64.powf(k as f64 / 10.0);
        let hi_us = (hi_ms * 1000.0) as u64;
        if hi_us > lo_us {
            out.push((hi_ms, f.latency_us.count_between(lo_us, hi_us - 1)));
            lo_us = hi_us;
        }
        if lo_us > max_us {
            break;
        }
    }
    out
}

fn opt(v: Option<f64>, unit: &str, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}{unit}"),
        None => "n/a".into(),
    }
}

/// The summary table printed at the end of a run.
pub fn summary(r: &Report) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        (
            "scenario",
            format!(
                "{} ({} room{}, {} participants, video {} kbit/s{}) against {}",
                r.scenario,
                r.rooms,
                if r.rooms == 1 { "" } else { "s" },
                r.participants,
                r.video_kbps,
                if r.simulcast { " in simulcast" } else { "" },
                r.target
            ),
        ),
        ("measured", format!("{:.1} s", r.duration_s)),
        (
            "joins",
            format!(
                "p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms  ({} joiners; request to first remote audio)",
                r.join_ms_p50, r.join_ms_p95, r.join_ms_p99, r.joins_measured
            ),
        ),
        (
            "latency",
            format!(
                "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  (sender to receiver, one clock)",
                r.latency_ms_p50, r.latency_ms_p95, r.latency_ms_p99
            ),
        ),
        (
            "media",
            format!(
                "{} packets received, {} lost ({:.3}%), jitter {:.2} ms",
                r.received_pkts, r.lost_pkts, r.loss_pct, r.jitter_ms
            ),
        ),
        (
            "recovery",
            format!(
                "{} NACKed, {} retransmitted; {} video freezes ({} ms)",
                r.nacks, r.retransmissions, r.freezes, r.freeze_ms
            ),
        ),
        (
            "speakers",
            format!(
                "{} active-speaker updates from signaling",
                r.speaker_changes
            ),
        ),
        (
            "SFU",
            format!(
                "CPU {} of a core, {} per delivered packet ({:.0} packets/s)",
                opt(r.sfu_cpu_pct, "%", 1),
                opt(r.cpu_us_per_fwd_pkt, " us", 2),
                r.fwd_pkts_per_s
            ),
        ),
        (
            "signaling",
            format!("CPU {} of a core", opt(r.signaling_cpu_pct, "%", 1)),
        ),
        (
            "memory",
            format!(
                "server RSS {}, {} per participant",
                r.server_rss_kb
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "n/a".into()),
                opt(r.rss_kb_per_participant, " KiB", 0)
            ),
        ),
        (
            "load tool",
            format!(
                "CPU {:.1}% of a core ({:.3}% per participant), RSS {:.1} MiB{}",
                r.tool_cpu_pct,
                r.tool_cpu_pct_per_participant,
                r.tool_rss_kb as f64 / 1024.0,
                if r.tool_frames_skipped > 0 {
                    format!(
                        "; {} frames skipped: the tool was short of CPU",
                        r.tool_frames_skipped
                    )
                } else {
                    String::new()
                }
            ),
        ),
        (
            "failures",
            if r.failures == 0 {
                "0".into()
            } else {
                format!("{} ({})", r.failures, r.failure_reasons.join("; "))
            },
        ),
    ];
    if let Some(s) = &r.last_good_step {
        rows.push((
            "ramp",
            format!(
                "last good step {}: {} rooms, {} participants (loss {:.2}%, p99 {:.1} ms)",
                s.step, s.rooms, s.participants, s.loss_pct, s.latency_ms_p99
            ),
        ));
    } else if !r.steps.is_empty() {
        rows.push((
            "ramp",
            "the first step already broke the quality bar".into(),
        ));
    }
    if let Some(why) = &r.ramp_stopped {
        rows.push(("stopped", why.clone()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("  {k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
