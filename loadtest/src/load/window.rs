//! Measuring a stretch of a run: what every member received (packets, loss, jitter, video
//! freezes, NACKs), send-to-receive latency on the one clock the media carries, and the CPU
//! the servers and the load tool spent meanwhile. A timeline sampler records CPU, memory and
//! participants once a second for the plots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::member::Member;
use super::probe::{ServerProbe, ServerReading};
use crate::driver::ClientDriver;
use crate::local::{process_cpu_seconds, process_rss_kb};

/// Sums over every member's received tracks at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct MediaTotals {
    pub received: u64,
    pub lost: u64,
    pub freezes: u64,
    pub freeze_ms: u64,
    pub jitter_ms_sum: f64,
    pub tracks: u64,
    pub nacks: u64,
    pub retransmissions: u64,
    pub speaker_changes: u64,
    pub frames_skipped: u64,
}

pub async fn media_totals(members: &[Member]) -> MediaTotals {
    let mut t = MediaTotals::default();
    for m in members {
        t.nacks += m.tally.nacks.load(Ordering::Relaxed);
        t.retransmissions += m.tally.retransmissions.load(Ordering::Relaxed);
        t.speaker_changes += m.tally.speaker_changes.load(Ordering::Relaxed);
        let Some(s) = m.stats().await else { continue };
        t.frames_skipped += s.frames_skipped;
        for r in &s.remote {
            t.received += r.packets;
            t.lost += r.lost;
            t.freezes += r.freezes;
            t.freeze_ms += r.freeze_ms;
            if !r.ended && r.packets > 0 {
                t.jitter_ms_sum += r.jitter_ms;
                t.tracks += 1;
            }
        }
    }
    t
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// What one measured stretch showed.
#[derive(Debug, Clone)]
pub struct Figures {
    pub seconds: f64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    /// Send-to-receive latency, microseconds.
    pub latency_us: Histogram<u64>,
    /// Mean of the tracks' jitter at the end.
    pub jitter_ms: f64,
    pub freezes: u64,
    pub freeze_ms: u64,
    pub nacks: u64,
    pub retransmissions: u64,
    pub speaker_changes: u64,
    /// Frames the participants' threads were too late to send (the tool's own limit).
    pub frames_skipped: u64,
    pub sfu_cpu_s: Option<f64>,
    pub signaling_cpu_s: Option<f64>,
    pub tool_cpu_s: f64,
    pub server_rss_kb: Option<u64>,
}

impl Figures {
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Packets the SFU delivered to the run's participants (received or lost on the way).
    pub fn fwd_pkts(&self) -> u64 {
        self.received + self.lost
    }
}

pub struct Window {
    t0: Instant,
    media: MediaTotals,
    server: ServerReading,
    tool_cpu_s: f64,
}

impl Window {
    /// Start measuring: latency samples so far are forgotten.
    pub async fn open(members: &[Member], drivers: &[ClientDriver], probe: &ServerProbe) -> Self {
        for d in drivers {
            let _ = d.reset_latency().await;
        }
        Window {
            t0: Instant::now(),
            media: media_totals(members).await,
            server: probe.read().await,
            tool_cpu_s: process_cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    pub async fn close(
        &self,
        members: &[Member],
        drivers: &[ClientDriver],
        probe: &ServerProbe,
    ) -> Figures {
        let media = media_totals(members).await;
        let server = probe.read().await;
        let tool = process_cpu_seconds(std::process::id()).unwrap_or(0.0);
        let mut latency_us = new_histogram();
        for d in drivers {
            if let Ok(h) = d.latency().await {
                let _ = latency_us.add(h);
            }
        }
        let received = media.received.saturating_sub(self.media.received);
        let lost = media.lost.saturating_sub(self.media.lost);
        let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a).max(0.0));
        Figures {
            seconds: self.t0.elapsed().as_secs_f64(),
            received,
            lost,
            loss_pct: if received + lost > 0 {
                100.0 * lost as f64 / (received + lost) as f64
            } else {
                0.0
            },
            latency_us,
            jitter_ms: if media.tracks > 0 {
                media.jitter_ms_sum / media.tracks as f64
            } else {
                0.0
            },
            freezes: media.freezes.saturating_sub(self.media.freezes),
            freeze_ms: media.freeze_ms.saturating_sub(self.media.freeze_ms),
            nacks: media.nacks.saturating_sub(self.media.nacks),
            retransmissions: media
                .retransmissions
                .saturating_sub(self.media.retransmissions),
            speaker_changes: media
                .speaker_changes
                .saturating_sub(self.media.speaker_changes),
            frames_skipped: media
                .frames_skipped
                .saturating_sub(self.media.frames_skipped),
            sfu_cpu_s: delta(self.server.sfu_cpu_s, server.sfu_cpu_s),
            signaling_cpu_s: delta(self.server.signaling_cpu_s, server.signaling_cpu_s),
            tool_cpu_s: (tool - self.tool_cpu_s).max(0.0),
            server_rss_kb: server.rss_kb,
        }
    }
}

/// One point of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub participants: usize,
    pub sfu_cpu_pct: Option<f64>,
    pub signaling_cpu_pct: Option<f64>,
    pub tool_cpu_pct: f64,
    pub server_rss_kb: Option<u64>,
    pub tool_rss_kb: u64,
}

/// Samples CPU, memory and the number of participants in the call once a second, until
/// dropped.
pub struct Sampler {
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub participants: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(probe: ServerProbe) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let participants = Arc::new(AtomicUsize::new(0));
        let (s, p) = (samples.clone(), participants.clone());
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let own = std::process::id();
            let mut last = (
                Instant::now(),
                probe.read().await,
                process_cpu_seconds(own).unwrap_or(0.0),
            );
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let server = probe.read().await;
                let tool = process_cpu_seconds(own).unwrap_or(0.0);
                let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                let pct = |a: Option<f64>, b: Option<f64>| {
                    a.zip(b).map(|(a, b)| 100.0 * (b - a).max(0.0) / dt)
                };
                let sample = Sample {
                    t_s: now.duration_since(t0).as_secs_f64(),
                    participants: p.load(Ordering::Relaxed),
                    sfu_cpu_pct: pct(last.1.sfu_cpu_s, server.sfu_cpu_s),
                    signaling_cpu_pct: pct(last.1.signaling_cpu_s, server.signaling_cpu_s),
                    tool_cpu_pct: 100.0 * (tool - last.2).max(0.0) / dt,
                    server_rss_kb: server.rss_kb,
                    tool_rss_kb: process_rss_kb(own).unwrap_or(0),
                };
                s.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                last = (now, server, tool);
            }
        });
        Sampler {
            samples,
            participants,
            task,
        }
    }

    pub fn last(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }

    pub fn take(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
