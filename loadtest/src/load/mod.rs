//! The load scenarios (`loadtest consult | interpreter | shared-room | ramp`): real WebRTC
//! participants, many per thread, joining the way users do, and a report of where the
//! servers stand.
//!
//! - [`target`]: a deployment (`--url`, loopback unless `--allow-remote`) or `metaclinic dev`
//!   started here with generated appointments ([`rooms`]); tokens from its dev issuer or
//!   signed with a key ([`token`]).
//! - [`member`]: one participant of the run (hosts admit their lobby).
//! - [`consult`], [`shared`], [`ramp`]: the scenarios.
//! - [`window`], [`probe`]: what is measured, on the clients and on the servers.
//! - [`report`], [`html`], [`progress`]: what is shown.

pub mod consult;
pub mod html;
pub mod member;
pub mod probe;
pub mod progress;
pub mod ramp;
pub mod report;
pub mod rooms;
pub mod shared;
pub mod target;
pub mod token;
pub mod window;

use std::path::PathBuf;

use crate::driver::ClientDriver;
use crate::netem::LinkSpec;
use crate::participant::{ParticipantSpec, VideoSpec};
use member::Member;
use probe::ServerProbe;
use report::{Report, latency_buckets, quantile};
use window::{Figures, Sample};

/// Most participants one run may hold, whatever `--max-participants` says.
pub const HARD_CAP: usize = 2000;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Signaling's URL of a running deployment (e.g. http://127.0.0.1:8080). Without it,
    /// `metaclinic dev` is started here with appointments generated for the run.
    #[arg(long)]
    pub url: Option<String>,
    /// Allow a target that is not on this machine.
    #[arg(long)]
    pub allow_remote: bool,
    /// Consultation rooms (consult, interpreter; the ramp's ceiling).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Avatars in the shared room.
    #[arg(long, default_value_t = 20)]
    pub avatars: usize,
    /// Shared room: avatars that also send video (everyone receives it). The mixer
    /// re-encodes audio, so the room's end-to-end latency is measured on this video.
    #[arg(long, default_value_t = 2)]
    pub presenters: usize,
    /// Seconds measured once everyone is in (the ramp: seconds per step).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of media before measuring starts.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Refuse to start more participants than this (at most 2000).
    #[arg(long, default_value_t = 500)]
    pub max_participants: usize,
    /// Video bitrate per participant (in the shared room: per presenter), kbit/s; 0 for
    /// audio only. Default: 300 in consultations, 150 in the shared room.
    #[arg(long)]
    pub video_kbps: Option<u32>,
    /// Send video as three simulcast layers (VP8: quarter, half and full size), as a
    /// browser does; the SFU picks a layer per subscriber.
    #[arg(long)]
    pub simulcast: bool,
    /// Threads running the participants.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Rooms joining at the same time.
    #[arg(long, default_value_t = 8)]
    pub join_concurrency: usize,
    /// Random loss on every participant's link, each way, percent.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with plots here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// The `metaclinic` binary for a local target (default: next to this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Media threads of the local SFU.
    #[arg(long, default_value_t = 1)]
    pub sfu_threads: u16,

    /// Sign tokens with this private key (PEM) instead of asking the dev issuer.
    #[arg(long)]
    pub token_key: Option<PathBuf>,
    /// The key's algorithm: ES256, ES384, RS256 or RS384.
    #[arg(long, default_value = "ES256")]
    pub token_alg: String,
    /// The key's id (`kid`) in the identity provider's JWKS.
    #[arg(long)]
    pub token_kid: Option<String>,
    /// The tokens' issuer (`iss`), as signaling expects it.
    #[arg(long, default_value = "")]
    pub token_issuer: String,
    /// The tokens' audience (`aud`).
    #[arg(long, default_value = "metaclinic")]
    pub token_audience: String,

    /// Appointment of room n on a deployment ({n}: the room number).
    #[arg(long, default_value = "lt-consult-{n}")]
    pub appointment_pattern: String,
    #[arg(long, default_value = "Practitioner/lt-dr-{n}")]
    pub host_pattern: String,
    #[arg(long, default_value = "Patient/lt-pat-{n}")]
    pub patient_pattern: String,
    #[arg(long, default_value = "Practitioner/lt-interp-{n}")]
    pub interpreter_pattern: String,
    /// Number of the first room.
    #[arg(long, default_value_t = 0)]
    pub first_room: usize,

    /// A remote SFU's Prometheus endpoint (with METACLINIC_SFU_CREDENTIAL if it asks).
    #[arg(long)]
    pub sfu_metrics: Option<String>,

    /// Shared room on a deployment: the group session's appointment (booked as a shared
    /// room), its host, who admits the others, and the other avatars ({n}: 1, 2, ...).
    #[arg(long, default_value = rooms::SHARED_APPOINTMENT)]
    pub shared_appointment: String,
    #[arg(long, default_value = rooms::SHARED_HOST)]
    pub shared_host: String,
    #[arg(long, default_value = rooms::AVATAR_PATTERN)]
    pub avatar_pattern: String,

    /// Ramp: rooms added per step.
    #[arg(long, default_value_t = 5)]
    pub step: usize,
    /// Ramp: the quality bar. A step breaks it with more loss, a higher latency p99, or any
    /// join failure.
    #[arg(long, default_value_t = 2.0)]
    pub max_loss_pct: f64,
    #[arg(long, default_value_t = 150.0)]
    pub max_latency_ms: f64,

    /// Resolved at the start of a run (see [`LoadArgs::resolve`]).
    #[arg(skip)]
    pub bind_ip: Option<std::net::IpAddr>,
}

impl LoadArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=3600).contains(&self.duration),
            "--duration must be 1..=3600 seconds"
        );
        anyhow::ensure!(self.warmup <= 60, "--warmup must be at most 60 seconds");
        anyhow::ensure!(
            (1..=HARD_CAP).contains(&self.max_participants),
            "--max-participants must be 1..={HARD_CAP}"
        );
        anyhow::ensure!(
            (0.0..=50.0).contains(&self.loss),
            "--loss must be 0..=50 (percent)"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.client_threads),
            "--client-threads must be 1..=16"
        );
        anyhow::ensure!(
            self.join_concurrency >= 1,
            "--join-concurrency must be at least 1"
        );
        anyhow::ensure!(self.step >= 1, "--step must be at least 1");
        if let Some(url) = &self.url {
            target::check_target(url, self.allow_remote)?;
        }
        if let Some(url) = &self.sfu_metrics {
            target::check_target(url, self.allow_remote)?;
        }
        Ok(())
    }

    /// Check the arguments and find the local address to use.
    pub fn resolve(&mut self) -> anyhow::Result<()> {
        self.check()?;
        self.bind_ip = Some(self.route_ip()?);
        Ok(())
    }

    pub fn patterns(&self) -> rooms::RoomPatterns {
        rooms::RoomPatterns {
            appointment: self.appointment_pattern.clone(),
            host: self.host_pattern.clone(),
            patient: self.patient_pattern.clone(),
            interpreter: self.interpreter_pattern.clone(),
        }
    }

    /// The shared room of a `shared-room` run, with `--avatars` people.
    pub fn shared_plan(&self) -> anyhow::Result<rooms::SharedPlan> {
        rooms::SharedPlan::new(
            &self.shared_appointment,
            &self.shared_host,
            &self.avatar_pattern,
            self.avatars,
        )
    }

    pub fn binary(&self) -> anyhow::Result<PathBuf> {
        match &self.bin {
            Some(b) => Ok(b.clone()),
            None => crate::local::sibling_binary("metaclinic"),
        }
    }

    /// The address participants bind to: the one that routes to the target.
    pub fn route_ip(&self) -> anyhow::Result<std::net::IpAddr> {
        match &self.url {
            Some(url) => target::local_ip_towards(url),
            None => Ok(std::net::Ipv4Addr::LOCALHOST.into()),
        }
    }

    /// What each participant publishes and how its link behaves; `n` seeds its link.
    pub fn spec(&self, name: &str, voice_hz: u32, video_kbps: u32, n: usize) -> ParticipantSpec {
        let mut spec = ParticipantSpec::new(name).with_speech(voice_hz);
        spec.bind_ip = self.bind_ip.unwrap_or(spec.bind_ip);
        // Decoding is the listener's cost, not the servers': load runs count, not listen.
        spec.decode_audio = false;
        if video_kbps > 0 {
            spec = spec.with_video(VideoSpec {
                kbps: video_kbps,
                simulcast: self.simulcast,
                ..VideoSpec::default()
            });
        }
        if self.loss > 0.0 {
            let link = |seed: u64| {
                Some(LinkSpec {
                    loss: self.loss / 100.0,
                    seed,
                    ..LinkSpec::default()
                })
            };
            spec = spec.with_links(link(2 * n as u64 + 1), link(2 * n as u64 + 2));
        }
        spec
    }
}

/// The participants' threads.
pub fn start_drivers(n: usize) -> anyhow::Result<Vec<ClientDriver>> {
    (0..n.max(1))
        .map(|i| Ok(ClientDriver::start(&format!("load-{i}"))?))
        .collect()
}

/// Everything the end of a run needs to write its report.
pub struct Outcome<'a> {
    pub scenario: &'a str,
    pub target: String,
    pub probe: &'a ServerProbe,
    pub rooms: usize,
    pub video_kbps: u32,
    pub simulcast: bool,
    pub members: &'a [Member],
    pub figures: &'a Figures,
    /// Server memory before anyone joined.
    pub baseline_rss_kb: Option<u64>,
    pub failures: Vec<String>,
    pub timeline: Vec<Sample>,
}

/// Join times, the figures of the measured window and the failures, as a report.
pub async fn report(o: Outcome<'_>) -> Report {
    let f = o.figures;
    let mut join_ms = Vec::new();
    let mut failures = o.failures;
    for m in o.members {
        if let Some(why) = m.ended() {
            failures.push(format!("{}: session ended ({why})", m.name));
            continue;
        }
        let Some(s) = m.stats().await else {
            failures.push(format!("{}: never admitted", m.name));
            continue;
        };
        match m.join_ms(&s) {
            Some(ms) if !m.host => join_ms.push(ms),
            Some(_) => {}
            None => failures.push(format!("{}: no remote audio", m.name)),
        }
    }
    join_ms.sort_by(f64::total_cmp);
    let participants = o.members.len();
    let per_s = |x: f64| if f.seconds > 0.0 { x / f.seconds } else { 0.0 };
    let tool_cpu_pct = 100.0 * per_s(f.tool_cpu_s);
    Report {
        scenario: o.scenario.to_owned(),
        participants,
        duration_s: f.seconds,
        join_ms_p50: quantile(&join_ms, 0.5),
        join_ms_p95: quantile(&join_ms, 0.95),
        join_ms_p99: quantile(&join_ms, 0.99),
        latency_ms_p50: f.latency_ms(0.5),
        latency_ms_p95: f.latency_ms(0.95),
        latency_ms_p99: f.latency_ms(0.99),
        loss_pct: f.loss_pct,
        cpu_us_per_fwd_pkt: f
            .sfu_cpu_s
            .filter(|_| f.fwd_pkts() > 0)
            .map(|c| c * 1e6 / f.fwd_pkts() as f64),
        rss_kb_per_participant: match (f.server_rss_kb, o.baseline_rss_kb) {
            (Some(now), Some(base)) if participants > 0 => {
                Some(now.saturating_sub(base) as f64 / participants as f64)
            }
            _ => None,
        },
        failures: failures.len(),
        target: o.target,
        server_figures_from: o.probe.source().into(),
        rooms: o.rooms,
        video_kbps: o.video_kbps,
        simulcast: o.simulcast,
        joins_measured: join_ms.len(),
        received_pkts: f.received,
        lost_pkts: f.lost,
        fwd_pkts_per_s: per_s(f.fwd_pkts() as f64),
        jitter_ms: f.jitter_ms,
        nacks: f.nacks,
        retransmissions: f.retransmissions,
        freezes: f.freezes,
        freeze_ms: f.freeze_ms,
        speaker_changes: f.speaker_changes,
        sfu_cpu_pct: f.sfu_cpu_s.map(|c| 100.0 * per_s(c)),
        signaling_cpu_pct: f.signaling_cpu_s.map(|c| 100.0 * per_s(c)),
        server_rss_kb: f.server_rss_kb,
        tool_cpu_pct,
        tool_cpu_pct_per_participant: if participants > 0 {
            tool_cpu_pct / participants as f64
        } else {
            0.0
        },
        tool_rss_kb: crate::local::process_rss_kb(std::process::id()).unwrap_or(0),
        tool_frames_skipped: f.frames_skipped,
        failure_reasons: failures.iter().take(20).cloned().collect(),
        steps: Vec::new(),
        last_good_step: None,
        ramp_stopped: None,
        latency_ms_histogram: latency_buckets(f),
        join_ms,
        timeline: o.timeline,
    }
}

/// Write `--json` and `--html` as asked.
pub fn write_outputs(args: &LoadArgs, r: &Report) -> anyhow::Result<()> {
    if let Some(p) = &args.json {
        std::fs::write(p, format!("{}\n", serde_json::to_string_pretty(r)?))?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, html::render(r))?;
    }
    Ok(())
}
