//! `loadtest forward`: the forwarding benchmark. Starts an SFU as a child process (so its CPU
//! is measured alone, from /proc), fills rooms with publishers and subscribers from the client
//! library, and after a warm-up measures one window: packets forwarded, SFU CPU per forwarded
//! packet, loss, and sender-to-receiver latency on one clock. A benchmark, not a test: it
//! reports, it does not judge.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::driver::ClientDriver;
use crate::local::{
    LocalSfu, metric_value, process_cpu_seconds, process_rss_kb, sibling_binary, thread_cpu_seconds,
};
use crate::netem::LinkSpec;
use crate::participant::{ParticipantSpec, VideoSpec};
use crate::sfu_client::SfuParticipant;

#[derive(Debug, Clone, clap::Args)]
pub struct ForwardArgs {
    /// Rooms to fill.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Publishers per room (each sends audio and video, and receives the others).
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscribers per room (receive only).
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// Length of the measured window, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The `metaclinic` binary to start (default: next to this one).
    #[arg(long)]
    pub sfu_bin: Option<PathBuf>,
    /// Media threads of the SFU.
    #[arg(long, default_value_t = 1)]
    pub sfu_threads: u16,
    /// Threads running the client participants.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Video bitrate per publisher, kbit/s (0: audio only).
    #[arg(long, default_value_t = 300)]
    pub video_kbps: u32,
    /// Seconds of media before the window opens.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Random loss on every participant's link, each way, in percent (0: none). Losses are
    /// recovered by NACK and retransmission; the report says how many.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Publishers send three simulcast layers (quarter, half and full size; `--video-kbps`
    /// is the top one's); each subscriber gets the one its bandwidth carries.
    #[arg(long)]
    pub simulcast: bool,
    /// Create every room at once (the top of the hour in a clinic), not one after another.
    #[arg(long)]
    pub burst: bool,
    /// Also run the same rooms with every participant relay-only through the node's
    /// embedded TURN server over this transport (udp, tcp or tls), and report both: the CPU
    /// a relayed packet costs beside a direct one.
    #[arg(long)]
    pub relay: Option<crate::relay::RelayTransport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    pub scenario: &'static str,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub participants: usize,
    pub seconds: f64,
    pub sfu_threads: u16,
    pub fwd_pkts: u64,
    pub fwd_pkts_per_s: f64,
    pub sfu_cpu_s: f64,
    pub sfu_cpu_pct: f64,
    /// Each media thread's CPU over the window, percent of one core (`media-0` first).
    pub sfu_thread_cpu_pct: Vec<f64>,
    pub cpu_us_per_fwd_pkt: f64,
    pub received_pkts: u64,
    pub lost_pkts: u64,
    pub loss_pct: f64,
    /// The same by kind: video is recovered by NACKs, audio (Opus, no retransmission) is
    /// not, and its decoder conceals what is missing.
    pub audio_loss_pct: f64,
    pub video_loss_pct: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub join_ms_p50: f64,
    pub sfu_rss_kb: u64,
    pub client_cpu_s: f64,
    pub client_cpu_us_per_rx_pkt: f64,
    /// Datagrams per recvmmsg / sendmmsg call in the window.
    pub sfu_recv_batch: f64,
    pub sfu_send_batch: f64,
    /// Loss put on each link each way, percent.
    pub link_loss_pct: f64,
    pub simulcast: bool,
    /// Packets subscribers NACKed, and the SFU's retransmissions from its send buffer.
    pub nacked_pkts: u64,
    pub retransmitted_pkts: u64,
    pub nacks_answered_pct: f64,
    /// Relay-only through the node's TURN server over this transport (None: direct).
    pub relay: Option<String>,
    /// Packets the TURN server relayed (both directions) in the window, the CPU of its
    /// thread, and that CPU per relayed packet.
    pub turn_relayed_pkts: u64,
    pub turn_cpu_s: f64,
    pub turn_cpu_us_per_relayed_pkt: f64,
    /// With `--relay`: the same rooms on the direct path, measured first.
    pub direct: Option<Box<ForwardReport>>,
}

/// Packets received and lost.
#[derive(Default, Clone, Copy)]
struct Count {
    received: u64,
    lost: u64,
}

impl Count {
    fn since(self, before: Count) -> Count {
        Count {
            received: self.received.saturating_sub(before.received),
            lost: self.lost.saturating_sub(before.lost),
        }
    }

    fn pct(self) -> f64 {
        let expected = self.received + self.lost;
        if expected > 0 {
            100.0 * self.lost as f64 / expected as f64
        } else {
            0.0
        }
    }
}

/// Over every subscription, by kind. A track's lost count falls again when a retransmission
/// fills a gap, so each kind's window is its own difference.
#[derive(Default, Clone, Copy)]
struct Totals {
    audio: Count,
    video: Count,
}

impl Totals {
    fn all(self) -> Count {
        Count {
            received: self.audio.received + self.video.received,
            lost: self.audio.lost + self.video.lost,
        }
    }
}

async fn totals(participants: &[SfuParticipant]) -> anyhow::Result<Totals> {
    let mut t = Totals::default();
    for p in participants {
        for r in p.stats().await?.remote {
            let kind = if r.codec == metaclinic_sfu::media::Codec::Opus {
                &mut t.audio
            } else {
                &mut t.video
            };
            kind.received += r.packets;
            kind.lost += r.lost;
        }
    }
    Ok(t)
}

/// The benchmark; with `--relay`, the direct path first, then the relayed one.
pub async fn run(args: ForwardArgs) -> anyhow::Result<ForwardReport> {
    let Some(transport) = args.relay else {
        return run_scenario(args, None).await;
    };
    let direct = run_scenario(args.clone(), None).await?;
    let setup = crate::forward_relay::RelaySetup::new(transport)?;
    let mut relayed = run_scenario(args, Some(&setup)).await?;
    relayed.direct = Some(Box::new(direct));
    Ok(relayed)
}

async fn run_scenario(
    args: ForwardArgs,
    relay: Option<&crate::forward_relay::RelaySetup>,
) -> anyhow::Result<ForwardReport> {
    anyhow::ensure!(
        args.rooms > 0 && args.publishers > 0,
        "--rooms and --publishers must be at least 1"
    );
    anyhow::ensure!(
        args.seconds > 0 && args.seconds <= 3600,
        "--seconds must be 1..=3600"
    );
    anyhow::ensure!(
        (0.0..=50.0).contains(&args.loss),
        "--loss must be 0..=50 (percent)"
    );
    let per_room = args.publishers + args.subscribers;
    anyhow::ensure!(
        args.rooms * per_room <= 2000,
        "at most 2000 participants per run"
    );
    let bin = match &args.sfu_bin {
        Some(b) => b.clone(),
        None => sibling_binary("metaclinic")?,
    };
    let max = per_room.max(2).to_string();
    let mut env = vec![("METACLINIC_SFU__ROOMS__MAX_PARTICIPANTS", max.as_str())];
    env.extend(relay.map(|r| r.env()).unwrap_or_default());
    let sfu = LocalSfu::start(&bin, args.sfu_threads, &env)?;
    let control = sfu.control.clone();
    let drivers: Vec<ClientDriver> = (0..args.client_threads.max(1))
        .map(|i| ClientDriver::start(&format!("fwd-{i}")))
        .collect::<Result<_, _>>()?;

    let video = (args.video_kbps > 0).then(|| VideoSpec {
        kbps: args.video_kbps,
        simulcast: args.simulcast,
        ..VideoSpec::default()
    });
    let rooms: Vec<String> = (0..args.rooms).map(|r| format!("bench-{r}")).collect();
    if args.burst {
        let created =
            futures_util::future::join_all(rooms.iter().map(|r| control.create_room(r))).await;
        for c in created {
            c?;
        }
    } else {
        for room in &rooms {
            control.create_room(room).await?;
        }
    }
    let mut jobs = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for i in 0..per_room {
            let publisher = i < args.publishers;
            let name = if publisher {
                format!("pub-{r}-{i}")
            } else {
                format!("sub-{r}-{i}")
            };
            let mut spec = ParticipantSpec::new(&name);
            spec.decode_audio = false; // decoding is the client's cost, not the SFU's
            if args.loss > 0.0 {
                let link = |seed: u64| {
                    Some(LinkSpec {
                        loss: args.loss / 100.0,
                        seed,
                        ..LinkSpec::default()
                    })
                };
                let seed = (r * per_room + i) as u64 * 2;
                spec = spec.with_links(link(seed + 1), link(seed + 2));
            }
            if publisher {
                spec = spec.with_tone(300 + (i as u32 * 110));
                if let Some(v) = &video {
                    spec = spec.with_video(v.clone());
                }
            }
            spec.relay = relay.map(|r| r.spec_for(&name));
            let driver = drivers[jobs.len() % drivers.len()].clone();
            jobs.push((driver, room.clone(), spec));
        }
    }
    eprintln!(
        "joining {} participants in {} rooms ...",
        jobs.len(),
        args.rooms
    );
    let joined: Vec<anyhow::Result<SfuParticipant>> = futures_util::stream::iter(jobs)
        .map(|(driver, room, spec)| {
            let control = control.clone();
            async move { SfuParticipant::join(&driver, &control, &room, None, spec).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let participants: Vec<SfuParticipant> = joined.into_iter().collect::<anyhow::Result<_>>()?;
    let mut join_ms: Vec<u64> = participants.iter().map(|p| p.signaling_ms).collect();
    join_ms.sort_unstable();

    // Every receiver has every track it should, or we say how far it got.
    let tracks_per_publisher = 1 + usize::from(video.is_some());
    let deadline = Instant::now() + Duration::from_secs(30 + participants.len() as u64 / 10);
    for p in &participants {
        let expected =
            tracks_per_publisher * (args.publishers - usize::from(p.name.starts_with("pub-")));
        let s = p
            .wait_for(deadline.saturating_duration_since(Instant::now()), |s| {
                s.remote.iter().filter(|t| t.packets > 0).count() >= expected
            })
            .await?;
        let got = s.remote.iter().filter(|t| t.packets > 0).count();
        anyhow::ensure!(
            got >= expected,
            "{} receives {got} of {expected} tracks",
            p.name
        );
    }
    eprintln!(
        "all media flowing; warming up {} s, then measuring {} s",
        args.warmup, args.seconds
    );
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let fwd =
        |text: &str| metric_value(text, "metaclinic_sfu_rtp_packets_forwarded_total", "") as u64;
    let own_pid = std::process::id();
    for d in &drivers {
        d.reset_latency().await?;
    }
    let t0 = Instant::now();
    let m0 = control.metrics().await?;
    let threads0 = thread_cpu_seconds(sfu.pid(), "media-")?;
    let turn0 = thread_cpu_seconds(sfu.pid(), "turn")?;
    let (cpu0, own0, fwd0, rx0) = (
        sfu.cpu_seconds()?,
        process_cpu_seconds(own_pid)?,
        fwd(&m0),
        totals(&participants).await?,
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let m1 = control.metrics().await?;
    let threads1 = thread_cpu_seconds(sfu.pid(), "media-")?;
    let turn1 = thread_cpu_seconds(sfu.pid(), "turn")?;
    let (cpu1, own1, fwd1, rx1) = (
        sfu.cpu_seconds()?,
        process_cpu_seconds(own_pid)?,
        fwd(&m1),
        totals(&participants).await?,
    );
    let delta = |name: &str| metric_value(&m1, name, "") - metric_value(&m0, name, "");
    let per_call = |datagrams: f64, calls: f64| if calls > 0.0 { datagrams / calls } else { 0.0 };
    let sfu_recv_batch = per_call(
        delta("metaclinic_sfu_datagrams_received_total"),
        delta("metaclinic_sfu_recv_batches_total"),
    );
    let sfu_send_batch = per_call(
        delta("metaclinic_sfu_datagrams_sent_total"),
        delta("metaclinic_sfu_send_batches_total"),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let turn_relayed_pkts = delta("metaclinic_sfu_turn_relayed_packets_total").max(0.0) as u64;
    let turn_cpu_s =
        turn1.iter().map(|t| t.1).sum::<f64>() - turn0.iter().map(|t| t.1).sum::<f64>();
    let nacked_pkts = delta("metaclinic_sfu_nacked_packets_total").max(0.0) as u64;
    let retransmitted_pkts = delta("metaclinic_sfu_retransmissions_total").max(0.0) as u64;

    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for d in &drivers {
        latency.add(d.latency().await?)?;
    }
    let fwd_pkts = fwd1.saturating_sub(fwd0);
    let Count { received, lost } = rx1.all().since(rx0.all());
    let sfu_cpu_s = cpu1 - cpu0;
    let client_cpu_s = own1 - own0;
    let report = ForwardReport {
        scenario: "forward",
        rooms: args.rooms,
        publishers: args.publishers,
        subscribers: args.subscribers,
        participants: participants.len(),
        seconds: elapsed,
        sfu_threads: args.sfu_threads,
        fwd_pkts,
        fwd_pkts_per_s: fwd_pkts as f64 / elapsed,
        sfu_cpu_s,
        sfu_cpu_pct: 100.0 * sfu_cpu_s / elapsed,
        sfu_thread_cpu_pct: threads1
            .iter()
            .map(|(name, s1)| {
                let s0 = threads0
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0.0, |t| t.1);
                (100.0 * (s1 - s0) / elapsed * 10.0).round() / 10.0
            })
            .collect(),
        cpu_us_per_fwd_pkt: if fwd_pkts > 0 {
            sfu_cpu_s * 1e6 / fwd_pkts as f64
        } else {
            0.0
        },
        received_pkts: received,
        lost_pkts: lost,
        loss_pct: Count { received, lost }.pct(),
        audio_loss_pct: rx1.audio.since(rx0.audio).pct(),
        video_loss_pct: rx1.video.since(rx0.video).pct(),
        latency_ms_p50: latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency_ms_p99: latency.value_at_quantile(0.99) as f64 / 1000.0,
        join_ms_p50: join_ms.get(join_ms.len() / 2).copied().unwrap_or(0) as f64,
        sfu_rss_kb: process_rss_kb(sfu.pid()).unwrap_or(0),
        client_cpu_s,
        client_cpu_us_per_rx_pkt: if received > 0 {
            client_cpu_s * 1e6 / received as f64
        } else {
            0.0
        },
        sfu_recv_batch,
        sfu_send_batch,
        link_loss_pct: args.loss,
        simulcast: args.simulcast,
        nacked_pkts,
        retransmitted_pkts,
        nacks_answered_pct: if nacked_pkts > 0 {
            100.0 * retransmitted_pkts as f64 / nacked_pkts as f64
        } else {
            0.0
        },
        relay: relay.map(|r| format!("{:?}", r.transport).to_lowercase()),
        turn_relayed_pkts,
        turn_cpu_s,
        turn_cpu_us_per_relayed_pkt: if turn_relayed_pkts > 0 {
            turn_cpu_s * 1e6 / turn_relayed_pkts as f64
        } else {
            0.0
        },
        direct: None,
    };
    for p in participants {
        let _ = p.leave().await;
    }
    Ok(report)
}

/// The human summary; the caller prints the JSON line after it. With `--relay`, the direct
/// run's first, then the relayed one's with what TURN cost.
pub fn summary(r: &ForwardReport) -> String {
    let Some(direct) = &r.direct else {
        return summary_one(r);
    };
    format!(
        "direct path:\n{}\nrelayed through the node's TURN server ({}):\n{}\n\x20 TURN        {} packets relayed, its thread {:.2} s CPU, {:.2} us per relayed packet\n\x20 per packet  {:.2} us SFU CPU per forwarded packet relayed, {:.2} us direct",
        summary_one(direct),
        r.relay.as_deref().unwrap_or("?"),
        summary_one(r),
        r.turn_relayed_pkts,
        r.turn_cpu_s,
        r.turn_cpu_us_per_relayed_pkt,
        r.cpu_us_per_fwd_pkt,
        direct.cpu_us_per_fwd_pkt,
    )
}

fn summary_one(r: &ForwardReport) -> String {
    format!(
        "forward: {rooms} rooms x ({p} publishers + {s} subscribers) = {n} participants, {secs:.1} s window, {t} SFU media thread(s){sim}\n\
         \x20 forwarded   {fwd} packets ({rate:.0}/s)\n\
         \x20 SFU CPU     {cpu:.2} s ({pct:.1}% of one core), {us:.2} us per forwarded packet, RSS {rss} KiB\n\
         \x20 per thread  {threads} (% of one core, media-0 first)\n\
         \x20 SFU I/O     {rb:.1} datagrams per recvmmsg, {sb:.1} per sendmmsg\n\
         \x20 received    {rx} packets, lost {lost} ({loss:.3}%: audio {aloss:.3}%, video {vloss:.3}%)\n\
         \x20 latency     p50 {p50:.2} ms, p99 {p99:.2} ms (sender to receiver, one clock)\n\
         \x20 join        p50 {join:.0} ms (session request to answer applied)\n\
         \x20 client CPU  {ccpu:.2} s ({cus:.2} us per received packet)\n\
         \x20 recovery    {ll}% link loss each way: {nacked} packets NACKed, {rtx} retransmitted ({ans:.1}%)",
        sim = if r.simulcast { ", simulcast" } else { "" },
        threads = r
            .sfu_thread_cpu_pct
            .iter()
            .map(|p| format!("{p:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        ll = r.link_loss_pct,
        nacked = r.nacked_pkts,
        rtx = r.retransmitted_pkts,
        ans = r.nacks_answered_pct,
        rooms = r.rooms,
        p = r.publishers,
        s = r.subscribers,
        n = r.participants,
        secs = r.seconds,
        t = r.sfu_threads,
        fwd = r.fwd_pkts,
        rate = r.fwd_pkts_per_s,
        cpu = r.sfu_cpu_s,
        pct = r.sfu_cpu_pct,
        us = r.cpu_us_per_fwd_pkt,
        rss = r.sfu_rss_kb,
        rb = r.sfu_recv_batch,
        sb = r.sfu_send_batch,
        rx = r.received_pkts,
        lost = r.lost_pkts,
        loss = r.loss_pct,
        aloss = r.audio_loss_pct,
        vloss = r.video_loss_pct,
        p50 = r.latency_ms_p50,
        p99 = r.latency_ms_p99,
        join = r.join_ms_p50,
        ccpu = r.client_cpu_s,
        cus = r.client_cpu_us_per_rx_pkt,
    )
}
