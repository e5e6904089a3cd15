//! A real browser in a consultation: headless Chromium (fake camera and microphone) and a
//! Rust client participant exchange audio and video through the SFU, in both directions.

mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use metaclinic_loadtest::control::StreamItem;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use metaclinic_sfu::events::{Rights, RoomEvent};
use serde_json::Value;

/// The browser side: a plain RTCPeerConnection; the test relays its SDP to the SFU.
const PAGE: &str = r#"<!doctype html><html><body><script>
window.mc = {
  pc: null,
  async start() {
    const pc = new RTCPeerConnection({ iceServers: [] });
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
      setTimeout(done, 3000);
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
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') inbound.push({ kind: s.kind, packets: s.packetsReceived || 0, framesDecoded: s.framesDecoded || 0 });
    });
    return { state: this.pc.connectionState, inbound };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_and_a_rust_participant_exchange_audio_and_video() {
    let sfu = common::start_sfu(1);
    let c = sfu.control.clone();
    c.create_room("browser-room").await.unwrap();

    let driver = ClientDriver::start("browser-test").unwrap();
    let rust = SfuParticipant::join(
        &driver,
        &c,
        "browser-room",
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

    let browser = Browser::launch().await;
    let addr = common::serve_page(PAGE).await;
    let page = browser.open(&format!("http://{addr}/")).await;

    // The browser joins through the control API, with the test relaying its SDP.
    c.open_session(
        "browser-room",
        "browser-patient",
        Some("patient"),
        Rights::default(),
    )
    .await
    .unwrap();
    let mut events = c
        .participant_events("browser-room", "browser-patient")
        .await
        .unwrap();
    let offer = page.eval("mc.start()").await;
    let answer = c
        .offer(
            "browser-room",
            "browser-patient",
            offer.as_str().unwrap().to_owned(),
        )
        .await
        .unwrap();
    page.eval(&format!(
        "mc.answer({})",
        serde_json::to_string(&answer).unwrap()
    ))
    .await;
    let relay_page = page.clone();
    let relay_control = c.clone();
    let relay = tokio::spawn(async move {
        while let Some(item) = events.next().await {
            if let StreamItem::Event(e) = item
                && let RoomEvent::Offer { participant, sdp } = e.event
                && participant.as_str() == "browser-patient"
            {
                let answer = relay_page
                    .eval(&format!(
                        "mc.offer({})",
                        serde_json::to_string(&sdp).unwrap()
                    ))
                    .await;
                relay_control
                    .answer(
                        "browser-room",
                        "browser-patient",
                        answer.as_str().unwrap().to_owned(),
                    )
                    .await
                    .unwrap();
            }
        }
    });

    // Both directions, bounded.
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut page_stats, mut rust_stats);
    loop {
        page_stats = page.eval("mc.stats()").await;
        rust_stats = rust.stats().await.unwrap();
        let (audio_packets, _) = inbound(&page_stats, "audio");
        let (video_packets, video_frames) = inbound(&page_stats, "video");
        let rust_audio = rust_stats
            .audio_from("browser-patient")
            .map_or(0, |a| a.audio_frames_decoded);
        let rust_keyframes = rust_stats
            .video_from("browser-patient")
            .map_or(0, |v| v.keyframes);
        if audio_packets > 50
            && video_packets > 20
            && video_frames > 10
            && rust_audio > 50
            && rust_keyframes >= 1
        {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "media did not flow both ways within 40 s\nbrowser: {page_stats:#}\nrust: {rust_stats:#?}\nconsole: {:#?}",
                browser.console.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(page_stats["state"], "connected");
    let audio = rust_stats.audio_from("browser-patient").unwrap();
    assert_eq!(audio.decode_errors, 0, "{rust_stats:#?}");
    relay.abort();
    drop(page);
}
