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
  // Video only, in three simulcast layers (quarter, half and full size), as a browser on a
  // good line sends it to an SFU.
  async startSimulcast() {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360, frameRate: 15 } });
    pc.addTransceiver(stream.getVideoTracks()[0], {
      direction: 'sendonly',
      streams: [stream],
      sendEncodings: [
        { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 100000 },
        { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 300000 },
        { rid: 'f', maxBitrate: 900000 },
      ],
    });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {
      if (pc.iceGatheringState === 'complete') return done();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
      setTimeout(done, 3000);
    });
    return pc.localDescription.sdp;
  },
  async sent() {
    const out = [];
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') out.push({ rid: s.rid, width: s.frameWidth || 0, bytes: s.bytesSent || 0 });
    });
    return out;
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

/// Join the browser page as `who` through the control API: its first offer from `start`
/// (a JavaScript expression), then it answers every offer the SFU makes, until aborted.
async fn join_browser(
    c: &metaclinic_loadtest::SfuControl,
    page: &common::browser::Page,
    room: &str,
    who: &str,
    start: &str,
) -> tokio::task::JoinHandle<()> {
    c.open_session(room, who, Some("patient"), Rights::default())
        .await
        .unwrap();
    let mut events = c.participant_events(room, who).await.unwrap();
    let offer = page.eval(start).await;
    let answer = c
        .offer(room, who, offer.as_str().unwrap().to_owned())
        .await
        .unwrap();
    page.eval(&format!(
        "mc.answer({})",
        serde_json::to_string(&answer).unwrap()
    ))
    .await;
    let (page, c, room, who) = (page.clone(), c.clone(), room.to_owned(), who.to_owned());
    tokio::spawn(async move {
        while let Some(item) = events.next().await {
            if let StreamItem::Event(e) = item
                && let RoomEvent::Offer {
                    participant, sdp, ..
                } = e.event
                && participant.as_str() == who
            {
                let answer = page
                    .eval(&format!(
                        "mc.offer({})",
                        serde_json::to_string(&sdp).unwrap()
                    ))
                    .await;
                c.answer(&room, &who, answer.as_str().unwrap().to_owned())
                    .await
                    .unwrap();
            }
        }
    })
}

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
                && let RoomEvent::Offer {
                    participant, sdp, ..
                } = e.event
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_simulcast_follows_the_layer_a_rust_subscriber_asks_for() {
    use metaclinic_sfu::control::api::VideoQuality;
    let sfu = common::start_sfu(1);
    let c = sfu.control.clone();
    c.create_room("simulcast-room").await.unwrap();
    let driver = ClientDriver::start("simulcast-test").unwrap();
    let rust = SfuParticipant::join(
        &driver,
        &c,
        "simulcast-room",
        Some("host"),
        ParticipantSpec::new("rust-doctor"),
    )
    .await
    .unwrap();
    // Three layers at 640x360 (Chromium would allow only two at this size by default).
    let browser =
        Browser::launch_with(&["--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/"])
            .await;
    let addr = common::serve_page(PAGE).await;
    let page = browser.open(&format!("http://{addr}/")).await;
    let relay = join_browser(
        &c,
        &page,
        "simulcast-room",
        "browser-patient",
        "mc.startSimulcast()",
    )
    .await;

    // The browser sends its layers; the subscriber, with nothing asked, gets the best.
    let width = |s: &metaclinic_loadtest::ParticipantStats| {
        s.video_from("browser-patient").and_then(|v| v.width)
    };
    let best = rust
        .wait_for(Duration::from_secs(40), |s| {
            width(s).is_some_and(|w| w >= 600)
        })
        .await
        .unwrap();
    let sent = page.eval("mc.sent()").await;
    eprintln!(
        "browser sends {sent}; the subscriber gets width {:?}",
        width(&best)
    );
    assert!(
        width(&best).is_some_and(|w| w >= 600),
        "the top layer never arrived: {best:#?}\nbrowser sends: {sent:#}\nconsole: {:#?}",
        browser.console.lock().unwrap()
    );
    let track = best.video_from("browser-patient").unwrap().track.clone();

    // A small tile: the subscriber asks for low and gets the quarter-size layer.
    rust.set_video_preference(&track, Some(VideoQuality::Low), false)
        .await
        .unwrap();
    let low = rust
        .wait_for(Duration::from_secs(10), |s| {
            width(s).is_some_and(|w| w <= 200)
        })
        .await
        .unwrap();
    eprintln!("asked for low: width {:?}", width(&low));
    assert!(width(&low).is_some_and(|w| w <= 200), "{low:#?}");
    let frames_low = low.video_from("browser-patient").unwrap().frames_complete;

    // Full screen again: high.
    rust.set_video_preference(&track, Some(VideoQuality::High), true)
        .await
        .unwrap();
    let high = rust
        .wait_for(Duration::from_secs(10), |s| {
            width(s).is_some_and(|w| w >= 600)
        })
        .await
        .unwrap();
    eprintln!("asked for high: width {:?}", width(&high));
    assert!(width(&high).is_some_and(|w| w >= 600), "{high:#?}");
    let v = high.video_from("browser-patient").unwrap();
    assert!(v.frames_complete > frames_low, "{v:#?}");
    // Switches kept the subscriber's stream whole: no gap it would count as loss.
    assert!(v.lost <= 2, "{v:#?}");
    relay.abort();
    drop(page);
}
