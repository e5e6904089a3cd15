//! `shared-room`: N avatars in one shared room, walking about and talking. The SFU mixes what
//! each hears into one binaural stream (so its CPU is the mixer's), poses travel on the data
//! channel. Avatars join a group session's appointment (booked as a shared room) through
//! signaling, as users do: its host first, who admits the others from the lobby.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use metaclinic_sfu::spatial::{Pose, Quat};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::consult::{Booking, Deployment};
use super::member::Member;
use super::progress::Progress;
use super::report::Report;
use super::window::{Sampler, Window};
use super::{LoadArgs, Outcome, report, start_drivers};
use crate::driver::{ClientDriver, ParticipantKey};
use crate::media::marker;

/// The room is a square this many metres wide, centred on the origin.
const ROOM_M: f32 = 20.0;
/// Walking pace, metres per second, and how often a pose is sent.
const PACE: f32 = 1.2;
const POSE_INTERVAL: Duration = Duration::from_millis(100);

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
    let plan = args.shared_plan()?;
    let dep = Deployment::open(&args, Booking::Shared(&plan)).await?;
    let progress = Progress::new();
    let drivers = start_drivers(args.client_threads)?;
    let sampler = Sampler::start(dep.probe.clone());
    let baseline = dep.probe.read().await.rss_kb;
    progress.joining(args.avatars);
    let (mut members, mut failures, mut presenting) = (Vec::new(), Vec::new(), Vec::new());
    let join = |i: usize, who: String, host: bool| {
        let (driver, dep, args) = (drivers[i % drivers.len()].clone(), &dep, &args);
        let appointment = plan.appointment.as_str();
        async move {
            let token = dep.tokens.token(&who, 120).await?;
            let kbps = if i < presenters { video_kbps } else { 0 };
            let mut spec = args.spec(&format!("avatar-{i}"), 200 + 20 * (i as u32 % 30), kbps, i);
            spec.data_channel = true;
            Member::join_signaling(&driver, &dep.ws_url(), appointment, &token, host, spec).await
        }
    };
    // The host first: nobody else is admitted without it.
    let people: Vec<(usize, String, bool)> = plan
        .people()
        .enumerate()
        .map(|(i, (who, host))| (i, who.to_owned(), host))
        .collect();
    let Some((host, guests)) = people.split_first() else {
        anyhow::bail!("no avatars");
    };
    match join(host.0, host.1.clone(), true).await {
        Ok(m) => {
            members.push(m);
            presenting.push(presenters > 0);
        }
        Err(e) => anyhow::bail!("the shared room's host {} cannot join: {e}", host.1),
    }
    let joined: Vec<(usize, anyhow::Result<Member>)> = futures_util::stream::iter(guests)
        .map(|(i, who, _)| async move { (*i, join(*i, who.clone(), false).await) })
        .buffer_unordered(args.join_concurrency)
        .collect()
        .await;
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
    // Admitted by now (or counted as failed): everyone walks.
    let mut rng = SmallRng::seed_from_u64(11);
    let walks = members
        .iter()
        .filter_map(|m| Some((m.driver.clone(), m.key()?, Stroll::new(&mut rng))))
        .collect();
    let walking = walk(walks);
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let window = Window::open(&members, &drivers, &dep.probe).await;
    progress.measuring("walking", args.duration);
    super::consult::hold(&members, args.duration, &progress, &sampler).await;
    let figures = window.close(&members, &drivers, &dep.probe).await;
    progress.finish();
    walking.abort();
    let r = report(Outcome {
        scenario: "shared-room",
        target: dep.describe(),
        probe: &dep.probe,
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
