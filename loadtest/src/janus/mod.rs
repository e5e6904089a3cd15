//! `loadtest janus-forward`: the `forward` benchmark's shape run against Janus's VideoRoom
//! (the reference SFU in `../shared/peers`), so that the CPU one forwarded packet costs can
//! be set beside MetaClinic's, back to back on the same machine. The same client library and
//! the same media as `forward` (Opus and synthetic VP8): publishers publish, subscribers and
//! the other publishers subscribe (in Janus, each over a connection of its own). Janus must
//! already be running (`janus/start_janus.sh` in the peers folder); its CPU is read from
//! /proc. A benchmark, not a test.

pub mod api;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::driver::{ClientDriver, ParticipantKey};
use crate::local::process_cpu_seconds;
use crate::participant::{ParticipantSpec, VideoSpec};
use api::JanusSession;

const VIDEOROOM: &str = "janus.plugin.videoroom";

#[derive(Debug, Clone, clap::Args)]
pub struct JanusForwardArgs {
    /// Rooms to fill.
    #[arg(long, default_value_t = 2)]
    pub rooms: usize,
    /// Publishers per room (each sends audio and video, and receives the others).
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscribers per room (receive only).
    #[arg(long, default_value_t = 12)]
    pub subscribers: usize,
    /// Length of the measured window, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of media before the window opens.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Video bitrate per publisher, kbit/s.
    #[arg(long, default_value_t = 1200)]
    pub video_kbps: u32,
    /// Janus's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8088/janus")]
    pub url: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JanusReport {
    pub scenario: &'static str,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    /// Client connections: Janus gives each publisher a second one to receive on.
    pub connections: usize,
    pub seconds: f64,
    /// Packets the subscriptions received in the window: what Janus forwarded.
    pub received_pkts: u64,
    pub lost_pkts: u64,
    pub loss_pct: f64,
    pub janus_cpu_s: f64,
    pub janus_cpu_pct: f64,
    pub cpu_us_per_fwd_pkt: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

/// A client connection and the Janus session it was negotiated over (kept open: its long
/// poll is the session's keep-alive).
struct Connection {
    key: ParticipantKey,
    _session: JanusSession,
    /// Tracks it should receive.
    expected: usize,
}

/// The running Janus's process id, from /proc.
fn janus_pid() -> anyhow::Result<u32> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "janus") {
            return Ok(pid);
        }
    }
    anyhow::bail!("no janus process: start it with janus/start_janus.sh in the peers folder")
}

fn feed_id(room: usize, publisher: usize) -> u64 {
    (room as u64 + 1) * 1000 + publisher as u64 + 1
}

fn room_id(room: usize) -> u64 {
    90_000 + room as u64
}

/// A publisher: its offer to the room, Janus's answer.
async fn publish(
    args: &JanusForwardArgs,
    driver: &ClientDriver,
    room: usize,
    i: usize,
) -> anyhow::Result<Connection> {
    let session = JanusSession::create(&args.url).await?;
    let handle = session.attach(VIDEOROOM).await?;
    let mut spec = ParticipantSpec::new(&format!("pub-{room}-{i}"))
        .with_tone(300 + i as u32 * 110)
        .with_video(VideoSpec {
            kbps: args.video_kbps,
            ..VideoSpec::default()
        });
    spec.decode_audio = false;
    let (key, offer) = driver.create(spec).await?;
    let body = json!({
        "request": "joinandconfigure", "room": room_id(room), "ptype": "publisher",
        "id": feed_id(room, i), "audio": true, "video": true,
    });
    let jsep = json!({"type": "offer", "sdp": offer, "trickle": false});
    let event = session.message(handle, body, Some(jsep)).await?;
    let answer = event["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("Janus did not answer the publisher: {event}"))?;
    driver.accept_answer(key, answer.to_owned()).await?;
    Ok(Connection {
        key,
        _session: session,
        expected: 0,
    })
}

/// A receiving connection subscribed to `feeds`: Janus offers, the client answers.
async fn subscribe(
    args: &JanusForwardArgs,
    driver: &ClientDriver,
    name: String,
    room: usize,
    feeds: Vec<u64>,
) -> anyhow::Result<Connection> {
    let session = JanusSession::create(&args.url).await?;
    let handle = session.attach(VIDEOROOM).await?;
    let mut spec = ParticipantSpec::new(&name);
    spec.decode_audio = false;
    // The client library starts with an offer of its own; Janus offers to subscribers.
    let (key, _own_offer) = driver.create(spec).await?;
    driver.rollback(key).await?;
    let streams: Vec<_> = feeds.iter().map(|f| json!({"feed": f})).collect();
    let body = json!({
        "request": "join", "room": room_id(room), "ptype": "subscriber", "streams": streams,
    });
    let event = session.message(handle, body, None).await?;
    let offer = event["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("Janus did not offer to {name}: {event}"))?;
    let answer = driver.accept_offer(key, offer.to_owned()).await?;
    let jsep = json!({"type": "answer", "sdp": answer, "trickle": false});
    let body = json!({"request": "start", "room": room_id(room)});
    session.message(handle, body, Some(jsep)).await?;
    Ok(Connection {
        key,
        _session: session,
        expected: 2 * feeds.len(),
    })
}

/// Packets received and lost over every receiving connection.
async fn totals(driver: &ClientDriver, connections: &[Connection]) -> anyhow::Result<(u64, u64)> {
    let (mut received, mut lost) = (0, 0);
    for c in connections {
        for r in driver.stats(c.key).await?.remote {
            received += r.packets;
            lost += r.lost;
        }
    }
    Ok((received, lost))
}

pub async fn run(args: JanusForwardArgs) -> anyhow::Result<JanusReport> {
    anyhow::ensure!(
        args.rooms > 0 && args.publishers > 0 && args.rooms * args.publishers <= 500,
        "--rooms and --publishers must be at least 1"
    );
    anyhow::ensure!(
        (1..=3600).contains(&args.seconds),
        "--seconds must be 1..=3600"
    );
    let pid = janus_pid()?;
    let driver = ClientDriver::start("janus-0")?;
    let admin = JanusSession::create(&args.url).await?;
    let admin_handle = admin.attach(VIDEOROOM).await?;
    for room in 0..args.rooms {
        // A room an earlier run left behind goes first.
        let stale = json!({"request": "destroy", "room": room_id(room)});
        let _ = admin.message(admin_handle, stale, None).await;
        let body = json!({
            "request": "create", "room": room_id(room), "publishers": args.publishers,
            "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0,
        });
        let r = admin.message(admin_handle, body, None).await?;
        let created = r["plugindata"]["data"]["videoroom"].as_str();
        anyhow::ensure!(
            created == Some("created"),
            "Janus did not create the room: {r}"
        );
    }
    let mut publishers = Vec::new();
    for room in 0..args.rooms {
        for i in 0..args.publishers {
            publishers.push(publish(&args, &driver, room, i).await?);
        }
    }
    // Janus knows a feed only once its connection is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &publishers {
        while !driver.stats(c.key).await?.connected {
            anyhow::ensure!(
                Instant::now() < deadline,
                "a publisher never connected to Janus"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut receivers = Vec::new();
    for room in 0..args.rooms {
        let feeds = |except: Option<usize>| -> Vec<u64> {
            (0..args.publishers)
                .filter(|&i| Some(i) != except)
                .map(|i| feed_id(room, i))
                .collect()
        };
        for i in 0..args.publishers {
            if args.publishers > 1 {
                let name = format!("pub-{room}-{i}-in");
                receivers.push(subscribe(&args, &driver, name, room, feeds(Some(i))).await?);
            }
        }
        for i in 0..args.subscribers {
            let name = format!("sub-{room}-{i}");
            receivers.push(subscribe(&args, &driver, name, room, feeds(None)).await?);
        }
    }
    eprintln!(
        "{} connections to Janus; waiting for media",
        publishers.len() + receivers.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &receivers {
        loop {
            let s = driver.stats(c.key).await?;
            let got = s.remote.iter().filter(|t| t.packets > 0).count();
            if got >= c.expected {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} receives {got} of {} tracks",
                s.name,
                c.expected
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "all media flowing; warming up {} s, then measuring {} s",
        args.warmup, args.seconds
    );
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    driver.reset_latency().await?;
    let t0 = Instant::now();
    let (cpu0, (rx0, lost0)) = (
        process_cpu_seconds(pid)?,
        totals(&driver, &receivers).await?,
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu1, (rx1, lost1)) = (
        process_cpu_seconds(pid)?,
        totals(&driver, &receivers).await?,
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let latency = driver.latency().await?;
    let received = rx1.saturating_sub(rx0);
    let lost = lost1.saturating_sub(lost0);
    let janus_cpu_s = cpu1 - cpu0;
    for c in publishers.iter().chain(&receivers) {
        let _ = driver.close(c.key).await;
    }
    let _ = admin
        .message(
            admin_handle,
            json!({"request": "destroy", "room": room_id(0)}),
            None,
        )
        .await;
    for room in 1..args.rooms {
        let body = json!({"request": "destroy", "room": room_id(room)});
        let _ = admin.message(admin_handle, body, None).await;
    }
    Ok(JanusReport {
        scenario: "janus-forward",
        rooms: args.rooms,
        publishers: args.publishers,
        subscribers: args.subscribers,
        connections: publishers.len() + receivers.len(),
        seconds: elapsed,
        received_pkts: received,
        lost_pkts: lost,
        loss_pct: if received + lost > 0 {
            100.0 * lost as f64 / (received + lost) as f64
        } else {
            0.0
        },
        janus_cpu_s,
        janus_cpu_pct: 100.0 * janus_cpu_s / elapsed,
        cpu_us_per_fwd_pkt: if received > 0 {
            janus_cpu_s * 1e6 / received as f64
        } else {
            0.0
        },
        latency_ms_p50: latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency_ms_p99: latency.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
