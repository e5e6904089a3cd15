//! Consultations through signaling, as users hold them: per room the doctor (host) enters,
//! the patient (and, three-way, the interpreter) waits in the lobby until the doctor admits
//! them, and everyone talks and shows video. `consult` and `interpreter` are this with two or
//! three people per room; `ramp` adds rooms step by step.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::member::Member;
use super::probe::ServerProbe;
use super::progress::Progress;
use super::rooms::{
    RoomPatterns, RoomPlan, SharedPlan, write_appointment, write_shared_appointment,
};
use super::target::DevChild;
use super::token::{TokenSigner, Tokens};
use super::window::{Figures, Sampler, Window, media_totals};
use super::{LoadArgs, Outcome, report, start_drivers};
use crate::driver::ClientDriver;
use crate::media::marker;

/// What a run books: consultation rooms, or one shared room.
pub enum Booking<'a> {
    Consultations { rooms: usize, three_way: bool },
    Shared(&'a SharedPlan),
}

/// The signaling deployment a run talks to, and how it is measured.
pub struct Deployment {
    pub base: String,
    pub probe: ServerProbe,
    pub tokens: Tokens,
    pub patterns: RoomPatterns,
    /// Started here (and stopped when dropped), if the run has no `--url`.
    pub dev: Option<DevChild>,
}

impl Deployment {
    /// `--url`, or `metaclinic dev` started here serving the appointments of `booking`,
    /// generated for the run.
    pub async fn open(args: &LoadArgs, booking: Booking<'_>) -> anyhow::Result<Self> {
        let tokens_for = |base: &str| -> anyhow::Result<Tokens> {
            Ok(match &args.token_key {
                Some(key) => Tokens::Signed(Box::new(TokenSigner::from_pem_file(
                    key,
                    &args.token_alg,
                    args.token_kid.as_deref(),
                    &args.token_issuer,
                    &args.token_audience,
                )?)),
                None => Tokens::DevIssuer {
                    base: base.to_owned(),
                },
            })
        };
        if let Some(url) = &args.url {
            let patterns = args.patterns();
            if let Booking::Consultations { three_way, .. } = booking {
                patterns.check(three_way)?;
            }
            let base = url.trim_end_matches('/').to_owned();
            return Ok(Deployment {
                probe: ServerProbe::Prometheus {
                    signaling: Some(format!("{base}/metrics")),
                    sfu: args.sfu_metrics.clone(),
                    sfu_credential: std::env::var("METACLINIC_SFU_CREDENTIAL").ok(),
                },
                tokens: tokens_for(&base)?,
                patterns,
                base,
                dev: None,
            });
        }
        let patterns = RoomPatterns::default();
        let dir = std::env::temp_dir().join(format!(
            "metaclinic-loadtest-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        // Long enough for the run, and the whole run inside the join window.
        let minutes = 30 + (args.duration as i64 * 4) / 60;
        match booking {
            Booking::Consultations { rooms, three_way } => {
                for n in 0..rooms {
                    write_appointment(
                        &dir,
                        &patterns.room(args.first_room + n, three_way),
                        minutes,
                    )?;
                }
            }
            Booking::Shared(plan) => write_shared_appointment(&dir, plan, minutes)?,
        }
        let dev = DevChild::start(&args.binary()?, &dir, args.sfu_threads)?;
        Ok(Deployment {
            base: dev.base.clone(),
            probe: ServerProbe::DevProcess { pid: dev.pid() },
            tokens: tokens_for(&dev.base)?,
            patterns,
            dev: Some(dev),
        })
    }

    pub fn ws_url(&self) -> String {
        let base = &self.base;
        let ws = base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .unwrap_or_else(|| base.replacen("http://", "ws://", 1));
        format!("{ws}/v1/ws")
    }

    pub fn describe(&self) -> String {
        match &self.dev {
            Some(_) => format!("metaclinic dev started here ({})", self.base),
            None => self.base.clone(),
        }
    }
}

/// Voices: each role talks at its own pitch, so a listener can tell them apart.
const HOST_HZ: u32 = 220;
const PATIENT_HZ: u32 = 330;
const INTERPRETER_HZ: u32 = 440;

/// Bring room `plan` in: the host first, then whoever it admits. Returns who got in and
/// why anyone did not.
pub async fn join_room(
    dep: &Deployment,
    args: &LoadArgs,
    drivers: &[ClientDriver],
    plan: &RoomPlan,
    n: usize,
    video_kbps: u32,
) -> (Vec<Member>, Vec<String>) {
    let ws = dep.ws_url();
    let mut people = vec![
        (plan.host.clone(), HOST_HZ, true),
        (plan.patient.clone(), PATIENT_HZ, false),
    ];
    if let Some(i) = &plan.interpreter {
        people.push((i.clone(), INTERPRETER_HZ, false));
    }
    let (mut members, mut failures) = (Vec::new(), Vec::new());
    for (i, (who, hz, host)) in people.into_iter().enumerate() {
        let seq = n * 3 + i;
        let driver = &drivers[seq % drivers.len()];
        let token = match dep.tokens.token(&who, 120).await {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{who}: no token: {e}"));
                continue;
            }
        };
        let spec = args.spec(&who, hz, video_kbps, seq);
        match Member::join_signaling(driver, &ws, &plan.appointment, &token, host, spec).await {
            Ok(m) => members.push(m),
            Err(e) => failures.push(format!("{who}: {e}")),
        }
        if host && members.is_empty() {
            break; // without its host nobody is admitted
        }
    }
    (members, failures)
}

/// Wait (bounded) until every member of `room` receives audio, and video if sent, from
/// every other; those that do not are reported as failures at the end.
pub async fn wait_for_media(room: &[Member], video: bool, deadline: Instant) {
    let per_peer = 1 + usize::from(video);
    let expected = per_peer * room.len().saturating_sub(1);
    for m in room {
        loop {
            let got = match m.stats().await {
                Some(s) => s
                    .remote
                    .iter()
                    .filter(|t| !t.ended && t.packets > 0)
                    .count(),
                None => 0,
            };
            if got >= expected || Instant::now() >= deadline || m.ended().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What joining and holding rooms need.
pub struct Run<'a> {
    pub dep: &'a Deployment,
    pub args: &'a LoadArgs,
    pub drivers: &'a [ClientDriver],
    pub progress: &'a Progress,
    pub sampler: &'a Sampler,
    pub video_kbps: u32,
}

impl Run<'_> {
    /// Join `plans` (a few rooms at a time) and wait for their media; adds who got in to
    /// `members` and why anyone did not to `failures`.
    pub async fn join_rooms(
        &self,
        plans: &[(usize, RoomPlan)],
        members: &mut Vec<Member>,
        failures: &mut Vec<String>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30 + plans.len() as u64 / 2);
        let mut joining = futures_util::stream::iter(plans.iter().cloned())
            .map(|(n, plan)| async move {
                let (room, fails) =
                    join_room(self.dep, self.args, self.drivers, &plan, n, self.video_kbps).await;
                wait_for_media(&room, self.video_kbps > 0, deadline).await;
                (room, fails)
            })
            .buffer_unordered(self.args.join_concurrency);
        while let Some((room, fails)) = joining.next().await {
            members.extend(room);
            failures.extend(fails);
            self.sampler
                .participants
                .store(members.len(), std::sync::atomic::Ordering::Relaxed);
            self.progress.joined(members.len(), failures.len());
        }
    }

    /// Hold the call for `seconds`, showing loss and CPU as they stand.
    pub async fn hold(&self, members: &[Member], seconds: u64) {
        hold(members, seconds, self.progress, self.sampler).await
    }
}

/// Hold the call for `seconds`, showing loss and CPU as they stand.
pub async fn hold(members: &[Member], seconds: u64, progress: &Progress, sampler: &Sampler) {
    let start = media_totals(members).await;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(seconds);
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_secs(2).min(left)).await;
        let now = media_totals(members).await;
        let (rx, lost) = (
            now.received.saturating_sub(start.received),
            now.lost.saturating_sub(start.lost),
        );
        let loss = if rx + lost > 0 {
            100.0 * lost as f64 / (rx + lost) as f64
        } else {
            0.0
        };
        progress.figures(t0.elapsed().as_secs(), loss, sampler.last().as_ref());
    }
}

/// Leave everyone (a few at a time, bounded).
pub async fn leave_all(members: Vec<Member>) {
    futures_util::stream::iter(members)
        .for_each_concurrent(32, |m| m.leave())
        .await;
}

/// `consult` (two per room) or `interpreter` (three per room).
pub async fn run(args: LoadArgs, three_way: bool) -> anyhow::Result<super::report::Report> {
    let mut args = args;
    args.resolve()?;
    crate::control::ensure_crypto_provider();
    marker::now_micros(); // the media clock starts before any participant
    let per_room = 2 + usize::from(three_way);
    anyhow::ensure!(args.rooms >= 1, "--rooms must be at least 1");
    anyhow::ensure!(
        args.rooms * per_room <= args.max_participants,
        "{} rooms of {per_room} exceed --max-participants {}",
        args.rooms,
        args.max_participants
    );
    let video_kbps = args.video_kbps.unwrap_or(300);
    let progress = Progress::new();
    let dep = Deployment::open(
        &args,
        Booking::Consultations {
            rooms: args.rooms,
            three_way,
        },
    )
    .await?;
    let drivers = start_drivers(args.client_threads)?;
    let sampler = Sampler::start(dep.probe.clone());
    let baseline = dep.probe.read().await.rss_kb;
    progress.joining(args.rooms * per_room);
    let plans: Vec<(usize, RoomPlan)> = (0..args.rooms)
        .map(|i| {
            let n = args.first_room + i;
            (n, dep.patterns.room(n, three_way))
        })
        .collect();
    let run = Run {
        dep: &dep,
        args: &args,
        drivers: &drivers,
        progress: &progress,
        sampler: &sampler,
        video_kbps,
    };
    let (mut members, mut failures) = (Vec::new(), Vec::new());
    run.join_rooms(&plans, &mut members, &mut failures).await;
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let window = Window::open(&members, &drivers, &dep.probe).await;
    progress.measuring("measuring", args.duration);
    run.hold(&members, args.duration).await;
    let figures: Figures = window.close(&members, &drivers, &dep.probe).await;
    progress.finish();
    let scenario = if three_way { "interpreter" } else { "consult" };
    let r = report(Outcome {
        scenario,
        target: dep.describe(),
        probe: &dep.probe,
        rooms: args.rooms,
        video_kbps,
        simulcast: args.simulcast,
        members: &members,
        figures: &figures,
        baseline_rss_kb: baseline,
        failures,
        timeline: sampler.take(),
    })
    .await;
    leave_all(members).await;
    Ok(r)
}
