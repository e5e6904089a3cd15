//! A shared room in the browser: dev mode's `demo-group`, three headless Chromium pages. The
//! doctor speaks (a 3 kHz tone from the fake microphone); the patient and the family member
//! listen (muted). Each page shows the room from above and plays the SFU's stereo mix. As the
//! doctor walks their avatar with the arrow keys from the patient's left to the patient's
//! right, the patient's map shows it there and the patient's received stereo balance
//! (measured with Web Audio on the received stream) moves from the left ear to the right.
//! Screenshots go to target/artifacts/web-shared-room.png (and -phone.png).

mod common;

use std::time::{Duration, Instant};

use common::browser::{Browser, Page};
use common::web::{click, dev_token, join_from_link, screenshot, start_dev, wait_for};
use serde_json::{Value, json};

/// A mono 16-bit WAV of a steady tone: the fake microphone of every page.
fn tone_wav(path: &std::path::Path, hz: f32, secs: u32) {
    let rate = 48_000u32;
    let samples: Vec<u8> = (0..rate * secs)
        .flat_map(|i| {
            let v = (0.3
                * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin()
                * f32::from(i16::MAX)) as i16;
            v.to_le_bytes()
        })
        .collect();
    let mut wav = Vec::with_capacity(44 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    std::fs::write(path, wav).unwrap();
}

/// Left over right (dB) of the page's received mix over `ms`: the stream through a
/// ChannelSplitter into two AnalyserNodes, RMS of each ear.
async fn balance(page: &Page, ms: u32) -> Value {
    page.eval(&format!(
        r#"(async () => {{
            const stream = metaclinic.mixStream();
            if (!stream) return null;
            const ctx = window.balanceContext || (window.balanceContext = new AudioContext());
            await ctx.resume();
            const source = ctx.createMediaStreamSource(stream);
            const split = ctx.createChannelSplitter(2);
            const ears = [ctx.createAnalyser(), ctx.createAnalyser()];
            source.connect(split);
            ears.forEach((a, i) => {{ a.fftSize = 2048; split.connect(a, i); }});
            const buffers = ears.map((a) => new Float32Array(a.fftSize));
            const energy = [0, 0];
            const end = performance.now() + {ms};
            while (performance.now() < end) {{
                await new Promise((done) => setTimeout(done, 40));
                ears.forEach((a, i) => {{
                    a.getFloatTimeDomainData(buffers[i]);
                    for (const s of buffers[i]) energy[i] += s * s;
                }});
            }}
            source.disconnect();
            return {{ left: energy[0], right: energy[1], db: 10 * Math.log10(energy[0] / energy[1]) }};
        }})()"#
    ))
    .await
}

/// Where `page`'s map shows the avatar labelled `label` (x, z), if it does.
async fn avatar_at(page: &Page, label: &str) -> Option<(f64, f64)> {
    let avatars = page.eval("metaclinic.avatars()").await;
    let a = avatars
        .as_array()?
        .iter()
        .find(|a| a["label"] == label && a["self"] == false)?;
    Some((a["x"].as_f64()?, a["z"].as_f64()?))
}

/// Wait until `page`'s map shows `label` within 0.3 m of (x, z).
async fn wait_for_avatar(page: &Page, label: &str, x: f64, z: f64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let at = avatar_at(page, label).await;
        if at.is_some_and(|(ax, az)| (ax - x).abs() < 0.3 && (az - z).abs() < 0.3) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the map never showed the {label} at ({x}, {z}): {at:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Real key presses on the focused map.
async fn press(page: &Page, key: &str, times: usize) {
    for _ in 0..times {
        for kind in ["keyDown", "keyUp"] {
            page.call(
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": key, "code": key, "windowsVirtualKeyCode": match key {
                    "ArrowLeft" => 37, "ArrowUp" => 38, "ArrowRight" => 39, _ => 40,
                } }),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_moves_from_the_left_ear_to_the_right_as_its_avatar_walks_in_the_browser() {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(150), shared_room())
        .await
        .expect("the shared room test finished within 150 s");
    println!("shared room test: {:.1} s", started.elapsed().as_secs_f64());
}

async fn shared_room() {
    let (_dev, base) = start_dev().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    // 3 kHz: the head shadows high frequencies most, as for the consonants of speech.
    tone_wav(&wav, 3000.0, 4);
    let browser = Browser::launch_with(&[
        &format!("--use-file-for-fake-audio-capture={}", wav.display()),
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ])
    .await;

    // The doctor (the host) enters at once; the patient and the family member wait.
    let doctor = join_from_link(
        &browser,
        &base,
        "demo-group",
        &dev_token(&base, "Practitioner/dr-demo").await,
    )
    .await;
    wait_for(&browser, &doctor, "metaclinic.view() === 'call'", 20).await;
    assert_eq!(doctor.eval("metaclinic.roomKind()").await, "shared");
    let mut listeners = Vec::new();
    for who in ["Patient/pat-demo", "RelatedPerson/family-demo"] {
        let page =
            join_from_link(&browser, &base, "demo-group", &dev_token(&base, who).await).await;
        wait_for(&browser, &page, "metaclinic.view() === 'lobby'", 20).await;
        let admit = format!("#waiting [data-action=admit][data-participant='{who}']");
        wait_for(
            &browser,
            &doctor,
            &format!("document.querySelector({})", json!(admit)),
            20,
        )
        .await;
        click(&doctor, &admit).await;
        wait_for(&browser, &page, "metaclinic.view() === 'call'", 20).await;
        // Listeners only: their microphones are muted (the page's button).
        click(&page, "#mic").await;
        listeners.push(page);
    }
    let patient = &listeners[0];

    // Every page shows the map, with everyone on it, and receives the stereo mix.
    for page in [&doctor, &listeners[0], &listeners[1]] {
        wait_for(
            &browser,
            page,
            "!document.getElementById('room').hidden && metaclinic.avatars().length === 3",
            20,
        )
        .await;
        wait_for(
            &browser,
            page,
            "metaclinic.stats().then((s) => s && s.inbound.some((i) => i.participant === 'spatial-mix' && i.kind === 'audio' && i.packets > 50))",
            20,
        )
        .await;
    }
    let stats = patient.eval("metaclinic.stats()").await;
    let audio: Vec<_> = stats["inbound"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "audio")
        .collect();
    assert_eq!(audio.len(), 1, "one mix, no voices of their own: {stats:#}");

    // The patient stands at the centre, the family member behind; the doctor two metres to
    // the patient's left (each page's own drag path).
    patient.eval("metaclinic.place(0, 0)").await;
    listeners[1].eval("metaclinic.place(0, 4)").await;
    doctor.eval("metaclinic.place(-2, 0)").await;
    wait_for_avatar(patient, "Clinician", -2.0, 0.0, 10).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // the mix's crossfade and buffers
    let left = balance(patient, 1500).await;

    // The doctor walks round in front of the patient to the right, with the arrow keys.
    doctor
        .eval("document.getElementById('room-map').focus()")
        .await;
    press(&doctor, "ArrowUp", 2).await;
    press(&doctor, "ArrowRight", 16).await;
    press(&doctor, "ArrowDown", 2).await;
    let own = doctor
        .eval("metaclinic.avatars().find((a) => a.self)")
        .await;
    assert_eq!(
        (own["x"].as_f64(), own["z"].as_f64()),
        (Some(2.0), Some(0.0)),
        "{own}"
    );
    wait_for_avatar(patient, "Clinician", 2.0, 0.0, 10).await;
    let described = patient
        .eval("document.getElementById('room-list').innerText")
        .await;
    assert!(
        described
            .as_str()
            .is_some_and(|t| t.contains("Clinician: 2.0 m to your right")),
        "{described}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let right = balance(patient, 1500).await;
    println!(
        "patient's balance (left over right): doctor on the left {left}, on the right {right}"
    );
    let db = |v: &Value| v["db"].as_f64().unwrap_or(f64::NAN);
    for v in [&left, &right] {
        assert!(
            v["left"].as_f64().unwrap_or(0.0) > 0.1 && v["right"].as_f64().unwrap_or(0.0) > 0.1,
            "the mix is heard in both ears: {v}"
        );
    }
    assert!(
        db(&left) > 6.0,
        "a voice on the left must be louder in the left ear: {left}"
    );
    assert!(
        db(&right) < -6.0,
        "a voice on the right must be louder in the right ear: {right}"
    );
    screenshot(patient, "web-shared-room.png", 1000, 760).await;
    // At phone width the map fits the screen and the description follows it.
    screenshot(patient, "web-shared-room-phone.png", 390, 800).await;
    let fits = patient
        .eval("document.getElementById('room-map').getBoundingClientRect().right <= window.innerWidth")
        .await;
    assert_eq!(fits, json!(true), "the map is wider than a phone");
}
