//! `shared-room`: N avatars in one shared room, walking about and talking. The SFU mixes what
//! each hears into one binaural stream (so its CPU is the mixer's), poses travel on the data
//! channel. Avatars enter through the SFU's control API (not signaling's shared rooms):
//! a `metaclinic sfu` started here, or a deployment's SFU given by `--sfu-control`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use metaclinic_sfu::room::RoomKind;
use metaclinic_sfu::spatial::{Pose, Quat};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::member::Member;
use super::probe::ServerProbe;
use super::progress::Progress;
use super::report::Report;
use super::window::{Sampler, Window};
use super::{LoadArgs, Outcome, report, start_drivers};
use crate::control::SfuControl;
use crate::driver::{ClientDriver, ParticipantKey};
use crate::local::{LocalSfu, metric_value};
use crate::media::marker;

/// The room is a square this many metres wide, centred on the origin.
const ROOM_M: f32 = 20.0;
/// Walking pace, metres per second, and how often a pose is sent.
const PACE: f32 = 1.2;
const POSE_INTERVAL: Duration = Duration::from_millis(100);
const ROOM: &str = "lt-hall";

/// An avatar's walk on the floor (x, z): towards a random point, then another.
struct Stroll {
    at: [f32; 2],
    to: [f32; 2],
}

impl Stroll {
    fn new(rng: &mut SmallRng) -> Stroll {
        let h = ROOM_M / 2.0;
        Stroll {
            at: [rng.random_range(-h..h), rng.random_range(-h..h)],
            to: [rng.random_range(-h..h), rng.random_range(-h..h)],
        }
    }

    fn step(&mut self, rng: &mut SmallRng, dt: f32) -> Pose {
        let d = [self.to[0] - self.at[0], self.to[1] - self.at[1]];
        let dist = (d[0] * d[0] + d[1] * d[1]).sqrt();
        if dist < 0.2 {
            let h = ROOM_M / 2.0;
            self.to = [rng.random_range(-h..h), rng.random_range(-h..h)];
        } else {
            let s = (PACE * dt / dist).min(1.0);
            self.at = [self.at[0] + d[0] * s, self.at[1] + d[1] * s];
        }
        // Facing where it walks: forward (-z) turned about +y towards the heading.
        Pose {
            position: [self.at[0], 1.6, self.at[1]],
            orientation: Quat::from_yaw_pitch_roll((-d[0]).atan2(-d[1]), 0.0, 0.0),
        }
    }
}

/// Send every avatar's pose every [`POSE_INTERVAL`] until aborted. A pose sent before an
/// avatar's data channel is open is simply not sent.
fn walk(mut walks: Vec<(ClientDriver, ParticipantKey, Stroll)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut tick = tokio::time::interval(POSE_INTERVAL);
        loop {
            tick.tick().await;
            for (driver, key, stroll) in &mut walks {
                let pose = stroll.step(&mut rng, POSE_INTERVAL.as_secs_f32());
                let _ = driver.send_on_channel(*key, pose.encode().to_vec()).await;
            }
        }
    })
}

pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    let mut args = args;
    args.resolve()?;
    crate::control::ensure_crypto_provider();
    marker::now_micros();
    anyhow::ensure!(args.avatars >= 2, "--avatars must be at least 2");
    anyhow::ensure!(
        args.avatars <= args.max_participants,
        "{} avatars exceed --max-participants {}",
        args.avatars,
        args.max_participants
    );
    let video_kbps = args.video_kbps.unwrap_or(150);
    let presenters = if video_kbps > 0 {
        args.presenters.min(args.avatars)
    } else {
        0
    };
    let (control, probe, target, _local): (SfuControl, ServerProbe, String, Option<LocalSfu>) =
        match &args.sfu_control {
            Some(url) => {
                let credential = std::env::var("METACLINIC_SFU_CREDENTIAL").map_err(|_| {
                    anyhow::anyhow!("--sfu-control needs METACLINIC_SFU_CREDENTIAL")
                })?;
                let probe = ServerProbe::Prometheus {
                    signaling: None,
                    sfu: Some(
                        args.sfu_metrics
                            .clone()
                            .unwrap_or_else(|| format!("{}/metrics", url.trim_end_matches('/'))),
                    ),
                    sfu_credential: Some(credential.clone()),
                };
                (SfuControl::new(url, &credential), probe, url.clone(), None)
            }
            None => {
                let max = args.avatars.max(16).to_string();
                let sfu = LocalSfu::start(
                    &args.binary()?,
                    args.sfu_threads,
                    &[("METACLINIC_SFU__ROOMS__MAX_PARTICIPANTS", &max)],
                )?;
                let probe = ServerProbe::SfuProcess { pid: sfu.pid() };
                let target = format!("metaclinic sfu started here ({})", sfu.control_addr);
                (sfu.control.clone(), probe, target, Some(sfu))
            }
        };
    control.create_room_of_kind(ROOM, RoomKind::Shared).await?;

    let progress = Progress::new();
    let drivers = start_drivers(args.client_threads)?;
    let sampler = Sampler::start(probe.clone());
    let baseline = probe.read().await.rss_kb;
    progress.joining(args.avatars);
    let joined: Vec<(usize, anyhow::Result<Member>)> = futures_util::stream::iter(0..args.avatars)
        .map(|i| {
            let (driver, control) = (drivers[i % drivers.len()].clone(), control.clone());
            let kbps = if i < presenters { video_kbps } else { 0 };
            let mut spec = args.spec(&format!("avatar-{i}"), 200 + 20 * (i as u32 % 30), kbps, i);
            spec.data_channel = true;
            async move { (i, Member::join_shared(&driver, &control, ROOM, spec).await) }
        })
        .buffer_unordered(args.join_concurrency)
        .collect()
        .await;
    let (mut members, mut failures, mut presenting) = (Vec::new(), Vec::new(), Vec::new());
    for (i, j) in joined {
        match j {
            Ok(m) => {
                members.push(m);
                presenting.push(i < presenters);
            }
            Err(e) => failures.push(format!("avatar-{i}: {e}")),
        }
    }
    sampler
        .participants
        .store(members.len(), std::sync::atomic::Ordering::Relaxed);
    progress.joined(members.len(), failures.len());
    let mut rng = SmallRng::seed_from_u64(11);
    let walks = members
        .iter()
        .filter_map(|m| Some((m.driver.clone(), m.key()?, Stroll::new(&mut rng))))
        .collect();
    let walking = walk(walks);

    // Everyone hears the mix and sees the presenters, or is counted as failed.
    let deadline = Instant::now() + Duration::from_secs(20 + members.len() as u64 / 5);
    for (m, &presents) in members.iter().zip(&presenting) {
        let videos = presenters - usize::from(presents);
        while Instant::now() < deadline {
            let ok = m.stats().await.is_some_and(|s| {
                let audio = s
                    .remote
                    .iter()
                    .any(|t| t.from == "spatial-mix" && t.packets > 0);
                let video = s
                    .remote
                    .iter()
                    .filter(|t| t.codec != metaclinic_sfu::media::Codec::Opus && t.packets > 0)
                    .count();
                audio && video >= videos
            });
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    // Without signaling, the SFU's own counters say what was NACKed and resent.
    let recovery = |m: &str| {
        (
            metric_value(m, "metaclinic_sfu_nacked_packets_total", ""),
            metric_value(m, "metaclinic_sfu_retransmissions_total", ""),
        )
    };
    let before = control.metrics().await.map(|m| recovery(&m));
    let window = Window::open(&members, &drivers, &probe).await;
    progress.measuring("walking", args.duration);
    super::consult::hold(&members, args.duration, &progress, &sampler).await;
    let mut figures = window.close(&members, &drivers, &probe).await;
    if let (Ok(b), Ok(a)) = (before, control.metrics().await.map(|m| recovery(&m))) {
        figures.nacks = (a.0 - b.0).max(0.0) as u64;
        figures.retransmissions = (a.1 - b.1).max(0.0) as u64;
    }
    progress.finish();
    walking.abort();
    let r = report(Outcome {
        scenario: "shared-room",
        target,
        probe: &probe,
        rooms: 1,
        video_kbps,
        simulcast: args.simulcast,
        members: &members,
        figures: &figures,
        baseline_rss_kb: baseline,
        failures,
        timeline: sampler.take(),
    })
    .await;
    super::consult::leave_all(members).await;
    let _ = control.close_room(ROOM).await;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatars_walk_inside_the_room_and_face_where_they_go() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut w = Stroll {
            at: [0.0, 0.0],
            to: [5.0, 0.0],
        };
        let pose = w.step(&mut rng, 1.0);
        assert!((pose.position[0] - PACE).abs() < 1e-4, "{pose:?}");
        // Walking towards +x, it faces +x: the head's forward (-z) turned right.
        let forward = pose.orientation.rotate([0.0, 0.0, -1.0]);
        assert!(forward[0] > 0.99, "{forward:?}");
        for _ in 0..2000 {
            let p = w.step(&mut rng, 0.1);
            assert!(p.position[0].abs() <= ROOM_M / 2.0 && p.position[2].abs() <= ROOM_M / 2.0);
            assert!(Pose::decode(&p.encode()).is_ok());
        }
    }
}
