//! Headless Chromium with `iceTransportPolicy: "relay"` holds a call through the node's
//! embedded TURN server, over UDP and over TLS, with a Rust participant on the direct path.
//!
//! - `chromium_relay_only_over_udp` / `_over_tls`: a plain RTCPeerConnection page given the
//!   TURN server and a credential, its SDP relayed to the SFU by the test. The selected
//!   candidate pair must be Chromium's relay candidate over the expected protocol, and the
//!   node's TURN metrics must show the allocation and the relayed media.
//! - `the_web_client_with_relay_1_goes_through_turn`: the reference web client, opened with
//!   `?relay=1` (the documented test hook: the page then forces `iceTransportPolicy: "relay"`
//!   and builds its peer connection with the `ice_servers` of `joined`). Doctor and patient
//!   see and hear each other while the node relays every packet of theirs.

mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::turn::{SECRET, TurnPorts, credential_for, make_cert, turn_env};
use metaclinic_loadtest::control::StreamItem;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use metaclinic_sfu::events::{Rights, RoomEvent};
use serde_json::{Value, json};

const PAGE: &str = r#"<!doctype html><html><body><script>
window.mc = {
  pc: null,
  async start(iceServers) {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
    this.pc = pc;
    pc.ontrack = (e) => {
      const el = document.createElement(e.track.kind);
      el.autoplay = true; el.muted = true; el.playsInline = true;
      el.srcObject = new MediaStream([e.track]);
      document.body.appendChild(el);
    };
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 15 } });
    for (const t of stream.getTracks()) pc.addTrack(t, stream);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {
      if (pc.iceGatheringState === 'complete') return done();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
      setTimeout(done, 5000);
    });
    return pc.localDescription.sdp;
  },
  async answer(sdp) { await this.pc.setRemoteDescription({ type: 'answer', sdp }); return true; },
  async offer(sdp) {
    await this.pc.setRemoteDescription({ type: 'offer', sdp });
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    return this.pc.localDescription.sdp;
  },
  async stats() {
    const inbound = [];
    let local = null;
    const all = new Map();
    const report = await this.pc.getStats();
    report.forEach((s) => all.set(s.id, s));
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') inbound.push({ kind: s.kind, packets: s.packetsReceived || 0, framesDecoded: s.framesDecoded || 0 });
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = all.get(s.selectedCandidatePairId);
        const c = pair && all.get(pair.localCandidateId);
        if (c) local = { type: c.candidateType, relayProtocol: c.relayProtocol || null };
      }
    });
    return { state: this.pc.connectionState, inbound, local };
  },
};
</script></body></html>"#;

fn inbound(stats: &Value, kind: &str) -> (u64, u64) {
    stats["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .fold((0, 0), |(p, f), s| {
            (
                p + s["packets"].as_u64().unwrap_or(0),
                f + s["framesDecoded"].as_u64().unwrap_or(0),
            )
        })
}

/// A call between Chromium (relay-only, through the node's TURN over `transport`) and a
/// Rust participant.
async fn relayed_call(transport: &str) {
    let cert = make_cert(&["127.0.0.1"]);
    let ports = TurnPorts::only(transport);
    let env = turn_env(ports, &cert, &[("BIND_IP", "127.0.0.1".into())]);
    let sfu = common::turn::start_sfu_with_turn(&env);
    let c = sfu.control.clone();
    c.create_room("relay-room").await.unwrap();
    let driver = ClientDriver::start("browser-relay").unwrap();
    let rust = SfuParticipant::join(
        &driver,
        &c,
        "relay-room",
        Some("host"),
        ParticipantSpec::new("rust-doctor")
            .with_tone(440)
            .with_video(VideoSpec {
                width: 320,
                height: 240,
                fps: 15,
                kbps: 200,
                keyframe_interval: Duration::from_secs(2),
                ..VideoSpec::default()
            }),
    )
    .await
    .unwrap();

    // The test CA is no system root: Chromium is told to accept the TURN server's
    // certificate as it is.
    let browser = Browser::launch_with(&["--ignore-certificate-errors"]).await;
    let addr = common::serve_page(PAGE).await;
    let page = browser.open(&format!("http://{addr}/")).await;
    const WHO: &str = "Patient/browser";
    c.open_session("relay-room", WHO, Some("patient"), Rights::default())
        .await
        .unwrap();
    let mut events = c.participant_events("relay-room", WHO).await.unwrap();
    let (username, credential) = credential_for(WHO, 600);
    let url = match transport {
        "udp" => format!("turn:127.0.0.1:{}?transport=udp", ports.udp),
        _ => format!("turns:127.0.0.1:{}?transport=tcp", ports.tls),
    };
    let servers = json!([{ "urls": [url], "username": username, "credential": credential }]);
    let offer = page.eval(&format!("mc.start({servers})")).await;
    let offer = offer.as_str().expect("an offer").to_owned();
    assert!(
        offer.contains("typ relay"),
        "relay candidates only: {offer}"
    );
    assert!(
        !offer.contains("typ host"),
        "relay candidates only: {offer}"
    );
    let answer = c.offer("relay-room", WHO, offer).await.unwrap();
    page.eval(&format!(
        "mc.answer({})",
        serde_json::to_string(&answer).unwrap()
    ))
    .await;
    let (relay_page, relay_control) = (page.clone(), c.clone());
    let relay = tokio::spawn(async move {
        while let Some(item) = events.next().await {
            if let StreamItem::Event(e) = item
                && let RoomEvent::Offer {
                    participant, sdp, ..
                } = e.event
                && participant.as_str() == WHO
            {
                let answer = relay_page
                    .eval(&format!(
                        "mc.offer({})",
                        serde_json::to_string(&sdp).unwrap()
                    ))
                    .await;
                let _ = relay_control
                    .answer(
                        "relay-room",
                        WHO,
                        answer.as_str().unwrap_or_default().to_owned(),
                    )
                    .await;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut page_stats, mut rust_stats);
    loop {
        page_stats = page.eval("mc.stats()").await;
        rust_stats = rust.stats().await.unwrap();
        let (audio, _) = inbound(&page_stats, "audio");
        let (video, frames) = inbound(&page_stats, "video");
        let rust_audio = rust_stats
            .audio_from(WHO)
            .map_or(0, |a| a.audio_frames_decoded);
        let rust_keyframes = rust_stats.video_from(WHO).map_or(0, |v| v.keyframes);
        if audio > 50 && video > 20 && frames > 10 && rust_audio > 50 && rust_keyframes >= 1 {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "no media both ways through TURN/{transport} within 40 s\nbrowser: {page_stats:#}\nrust: {rust_stats:#?}\nconsole: {:#?}",
                browser.console.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(page_stats["state"], "connected");
    assert_eq!(page_stats["local"]["type"], "relay", "{page_stats:#}");
    assert_eq!(
        page_stats["local"]["relayProtocol"], transport,
        "{page_stats:#}"
    );
    let m = c.metrics().await.unwrap();
    let made = common::metric(
        &m,
        "metaclinic_sfu_turn_allocations_total",
        &format!("transport=\"{transport}\""),
    );
    assert!(made >= 1.0, "{m}");
    let to_peer = common::metric(
        &m,
        "metaclinic_sfu_turn_relayed_packets_total",
        "direction=\"to_peer\"",
    );
    let to_client = common::metric(
        &m,
        "metaclinic_sfu_turn_relayed_packets_total",
        "direction=\"to_client\"",
    );
    assert!(to_peer > 100.0 && to_client > 100.0, "{m}");
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_relay_only_over_udp() {
    tokio::time::timeout(Duration::from_secs(120), relayed_call("udp"))
        .await
        .expect("within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_relay_only_over_tls() {
    tokio::time::timeout(Duration::from_secs(120), relayed_call("tls"))
        .await
        .expect("within 2 minutes");
}

/// The reference web client, relay-only through the node's TURN over `transport`.
async fn web_client_relayed(transport: &str) {
    let cert = make_cert(&["127.0.0.1"]);
    let ports = TurnPorts::only(transport);
    let mut env = turn_env(ports, &cert, &[("BIND_IP", "127.0.0.1".into())]);
    env.push((
        "METACLINIC_SIGNALING__ICE_SERVERS__TURN_SHARED_SECRET".into(),
        SECRET.into(),
    ));
    let dev = common::dev::start_dev_with(&env).await;
    let (browser, doctor, patient) = common::web::relay_only_consultation(&dev.base).await;
    // The page says which way it connected, and its pre-call check found the relay.
    common::web::assert_relayed_over(&browser, [&doctor, &patient], transport).await;
    // Media both ways through the relay, handed to the media thread and back without a
    // socket (turn::bridge), and nothing on the media socket itself. Read until the call has
    // carried enough (bounded).
    let series = [
        (
            "metaclinic_sfu_turn_relayed_packets_total",
            "direction=\"to_peer\"",
        ),
        (
            "metaclinic_sfu_turn_handed_packets_total",
            "direction=\"to_media\"",
        ),
        (
            "metaclinic_sfu_turn_handed_packets_total",
            "direction=\"to_client\"",
        ),
    ];
    let mut m = String::new();
    for _ in 0..40 {
        m = reqwest::get(format!("{}/metrics", dev.sfu_control))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if series
            .iter()
            .all(|(name, labels)| common::metric(&m, name, labels) > 200.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (name, labels) in series {
        assert!(
            common::metric(&m, name, labels) > 200.0,
            "{name}{{{labels}}}: {m}"
        );
    }
    assert_eq!(
        common::metric(&m, "metaclinic_sfu_datagrams_sent_total", ""),
        0.0,
        "relayed media left on the media socket: {m}"
    );
    let made = common::metric(
        &m,
        "metaclinic_sfu_turn_allocations_total",
        &format!("transport=\"{transport}\""),
    );
    assert!(
        made >= 2.0,
        "both browsers allocate on the node's TURN over {transport}: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_with_relay_1_goes_through_turn() {
    tokio::time::timeout(Duration::from_secs(240), async {
        web_client_relayed("udp").await;
        web_client_relayed("tls").await;
    })
    .await
    .expect("within 4 minutes");
}
