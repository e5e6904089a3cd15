//! `ramp`: consultations added step by step (`--step` rooms at a time, each step held and
//! measured for `--duration` seconds) until quality breaks: loss over `--max-loss-pct`, a
//! latency p99 over `--max-latency-ms`, or a join that fails. The report names the last step
//! that held the bar. The run is bounded by `--max-participants` whatever happens.

use std::time::Duration;

use super::consult::{Booking, Deployment, Run, leave_all};
use super::progress::Progress;
use super::report::{RampStep, Report};
use super::rooms::RoomPlan;
use super::window::{Sampler, Window};
use super::{LoadArgs, Outcome, report, start_drivers};
use crate::media::marker;

/// Does a step hold the quality bar? `None` if it does, else why not.
pub fn verdict(
    args: &LoadArgs,
    loss_pct: f64,
    p99_ms: f64,
    join_failures: usize,
) -> Option<String> {
    if join_failures > 0 {
        Some(format!("{join_failures} join(s) failed"))
    } else if loss_pct > args.max_loss_pct {
        Some(format!("loss {loss_pct:.2}% over {}%", args.max_loss_pct))
    } else if p99_ms > args.max_latency_ms {
        Some(format!(
            "latency p99 {p99_ms:.1} ms over {} ms",
            args.max_latency_ms
        ))
    } else {
        None
    }
}

pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    let mut args = args;
    args.resolve()?;
    crate::control::ensure_crypto_provider();
    marker::now_micros();
    let ceiling = args.max_participants / 2;
    anyhow::ensure!(
        ceiling >= 1,
        "--max-participants must allow one room of two"
    );
    let video_kbps = args.video_kbps.unwrap_or(300);
    let progress = Progress::new();
    let dep = Deployment::open(
        &args,
        Booking::Consultations {
            rooms: ceiling,
            three_way: false,
        },
    )
    .await?;
    let drivers = start_drivers(args.client_threads)?;
    let sampler = Sampler::start(dep.probe.clone());
    let baseline = dep.probe.read().await.rss_kb;
    let run = Run {
        dep: &dep,
        args: &args,
        drivers: &drivers,
        progress: &progress,
        sampler: &sampler,
        video_kbps,
    };
    let (mut members, mut failures) = (Vec::new(), Vec::new());
    let mut steps = Vec::new();
    let mut rooms = 0;
    let (stopped, figures) = loop {
        let add = args.step.min(ceiling - rooms);
        let plans: Vec<(usize, RoomPlan)> = (rooms..rooms + add)
            .map(|i| {
                let n = args.first_room + i;
                (n, dep.patterns.room(n, false))
            })
            .collect();
        rooms += add;
        progress.joining(rooms * 2);
        progress.joined(members.len(), failures.len());
        let failed_before = failures.len();
        run.join_rooms(&plans, &mut members, &mut failures).await;
        let join_failures = failures.len() - failed_before;
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        let window = Window::open(&members, &drivers, &dep.probe).await;
        progress.measuring(
            &format!("step {} ({rooms} rooms)", steps.len() + 1),
            args.duration,
        );
        run.hold(&members, args.duration).await;
        let f = window.close(&members, &drivers, &dep.probe).await;
        let p99 = f.latency_ms(0.99);
        // A call that ended by itself during the step is a failure of that step too.
        let ended = members.iter().filter(|m| m.ended().is_some()).count();
        let broke = verdict(&args, f.loss_pct, p99, join_failures + ended);
        let step = RampStep {
            step: steps.len() + 1,
            rooms,
            participants: members.len(),
            join_failures,
            loss_pct: f.loss_pct,
            latency_ms_p99: p99,
            sfu_cpu_pct: f.sfu_cpu_s.map(|c| 100.0 * c / f.seconds.max(1e-3)),
            broke: broke.clone(),
        };
        progress.println(&format!(
            "step {}: {} rooms, {} participants, loss {:.2}%, p99 {:.1} ms{}",
            step.step,
            step.rooms,
            step.participants,
            step.loss_pct,
            step.latency_ms_p99,
            broke.as_ref().map(|b| format!(": {b}")).unwrap_or_default()
        ));
        steps.push(step);
        if let Some(why) = broke {
            break (why, f);
        }
        if rooms >= ceiling {
            let why = format!(
                "reached --max-participants {} with quality intact",
                args.max_participants
            );
            break (why, f);
        }
    };
    progress.finish();
    let mut r = report(Outcome {
        scenario: "ramp",
        target: dep.describe(),
        probe: &dep.probe,
        rooms,
        video_kbps,
        simulcast: args.simulcast,
        members: &members,
        figures: &figures,
        baseline_rss_kb: baseline,
        failures,
        timeline: sampler.take(),
    })
    .await;
    r.last_good_step = steps.iter().rev().find(|s| s.broke.is_none()).cloned();
    r.steps = steps;
    r.ramp_stopped = Some(stopped);
    leave_all(members).await;
    Ok(r)
}
