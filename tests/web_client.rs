//! The reference web client in a real browser: headless Chromium (fake camera and microphone)
//! opens the page `metaclinic dev` serves. A patient picks themselves on the dev start page
//! and waits; the doctor, joining from a link, lets them in; each sees and hears the other;
//! the doctor mutes the patient, lets an interpreter in, and ends the consultation.
//! Screenshots go to target/artifacts/.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::web::{
    click, dev_token, inbound, join_from_link, join_from_precall, screenshot, start_dev, wait_for,
    wait_for_media,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_patient_and_interpreter_hold_a_consultation_in_the_browser() {
    tokio::time::timeout(Duration::from_secs(240), consultation())
        .await
        .expect("the browser consultation finished within 4 minutes");
}

async fn consultation() {
    let (_dev, base) = start_dev().await;
    // Pages in one browser; none of them may be throttled as a background tab.
    let browser = Browser::launch_with(&[
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ])
    .await;

    // The doctor joins from a link and is in the call at once.
    let doctor_token = dev_token(&base, "Practitioner/dr-demo").await;
    let doctor = join_from_link(&browser, &base, "demo-consult", &doctor_token).await;
    wait_for(&browser, &doctor, "metaclinic.view() === 'call'", 20).await;
    assert_eq!(doctor.eval("metaclinic.role()").await, "host");
    // The token left the address bar.
    let href = doctor.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains("token"), "{href}");

    // The patient picks themselves on the dev start page and waits in the lobby.
    let patient = browser.open(&format!("{base}/")).await;
    wait_for(&browser, &patient, "metaclinic.view() === 'start'", 20).await;
    click(&patient, "input[value='Patient/pat-demo']").await;
    click(&patient, "#start-form button[type=submit]").await;
    join_from_precall(&browser, &patient).await;
    wait_for(&browser, &patient, "metaclinic.view() === 'lobby'", 20).await;
    let lobby_text = patient
        .eval("document.getElementById('lobby').innerText")
        .await;
    assert!(
        lobby_text
            .as_str()
            .unwrap()
            .contains("Waiting for your clinician to let you in"),
        "{lobby_text}"
    );
    screenshot(&patient, "web-lobby.png", 390, 700).await;

    // The doctor sees the patient waiting and lets them in.
    wait_for(
        &browser,
        &doctor,
        "document.querySelector(\"#waiting [data-participant='Patient/pat-demo']\")",
        20,
    )
    .await;
    screenshot(&doctor, "web-host-waiting-room.png", 1000, 760).await;
    click(
        &doctor,
        "#waiting [data-action=admit][data-participant='Patient/pat-demo']",
    )
    .await;
    wait_for(&browser, &patient, "metaclinic.view() === 'call'", 20).await;

    // Each receives the other's audio and video.
    wait_for_media(&browser, &doctor, "Patient/pat-demo", 40).await;
    wait_for_media(&browser, &patient, "Practitioner/dr-demo", 40).await;
    // No TURN configured: the page says it connected straight to the node over UDP.
    wait_for(&browser, &patient, "metaclinic.way() === 'udp'", 20).await;
    let tiles = doctor.eval("metaclinic.tiles()").await;
    assert!(
        tiles
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["role"] == "patient" && t["video"] == true),
        "{tiles:#}"
    );
    wait_for(
        &browser,
        &doctor,
        "document.getElementById('quality').textContent.includes('good')",
        20,
    )
    .await;
    // The SFU's dominant speaker marks a tile.
    wait_for(
        &browser,
        &doctor,
        "metaclinic.tiles().some((t) => t.speaking && t.label.includes('speaking'))",
        20,
    )
    .await;
    screenshot(&doctor, "web-consultation.png", 1000, 760).await;

    // The doctor mutes the patient: the patient's audio stops arriving at the doctor's page.
    let (before, _) = inbound(&doctor, "Patient/pat-demo", "audio").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (flowing, _) = inbound(&doctor, "Patient/pat-demo", "audio").await;
    assert!(flowing > before + 40, "audio flows: {before} -> {flowing}");
    click(&doctor, ".tile[data-role=patient] [data-action=mute]").await;
    wait_for(
        &browser,
        &patient,
        "metaclinic.status().includes('muted your microphone')",
        10,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (muted_from, _) = inbound(&doctor, "Patient/pat-demo", "audio").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (muted_to, _) = inbound(&doctor, "Patient/pat-demo", "audio").await;
    assert!(
        muted_to <= muted_from + 3,
        "muted audio still arrives: {muted_from} -> {muted_to}"
    );
    let (video_from, _) = inbound(&doctor, "Patient/pat-demo", "video").await;
    assert!(video_from > 0, "the patient's video still flows");

    // An interpreter joins as the third; the doctor lets them in.
    let interpreter_token = dev_token(&base, "Practitioner/interp-demo").await;
    let interpreter = join_from_link(&browser, &base, "demo-consult", &interpreter_token).await;
    wait_for(&browser, &interpreter, "metaclinic.view() === 'lobby'", 20).await;
    wait_for(
        &browser,
        &doctor,
        "document.querySelector(\"#waiting [data-participant='Practitioner/interp-demo']\")",
        20,
    )
    .await;
    click(
        &doctor,
        "#waiting [data-action=admit][data-participant='Practitioner/interp-demo']",
    )
    .await;
    wait_for(&browser, &interpreter, "metaclinic.view() === 'call'", 20).await;
    wait_for_media(&browser, &interpreter, "Practitioner/dr-demo", 40).await;
    wait_for_media(&browser, &doctor, "Practitioner/interp-demo", 40).await;
    let tiles = doctor.eval("metaclinic.tiles()").await;
    assert!(
        tiles
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["role"] == "interpreter" && t["marked"] == true),
        "{tiles:#}"
    );
    screenshot(&doctor, "web-consultation-three.png", 1000, 760).await;

    // The doctor ends the consultation (a second press confirms); both others see it ended.
    click(&doctor, "#end").await;
    click(&doctor, "#end").await;
    for page in [&patient, &interpreter] {
        wait_for(&browser, page, "metaclinic.view() === 'ended'", 15).await;
        let text = page.eval("metaclinic.endedText()").await;
        assert!(
            text.as_str().unwrap().contains("ended the consultation"),
            "{text}"
        );
    }
    screenshot(&patient, "web-ended.png", 390, 700).await;
}

/// The page and its files are served with a strict policy; other names are not found.
#[tokio::test]
async fn the_client_is_served_with_a_strict_content_security_policy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, metaclinic_signaling::web::router::<()>()).await
    });
    metaclinic_signaling::install_crypto_provider();
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();

    let page = get("/").await.unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-cache");
    let csp = header("content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self';"),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("connect-src 'self' ws://{addr} wss://{addr};")),
        "{csp}"
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<script type=\"module\" src=\"/app.js\">")
    );

    let script = get("/app.js").await.unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        get("/style.css").await.unwrap().headers()["content-type"],
        "text/css; charset=utf-8"
    );
    for missing in ["/nonexistent.js", "/..%2fCargo.toml", "/web/app.js"] {
        assert_eq!(get(missing).await.unwrap().status(), 404, "{missing}");
    }
    server.abort();
}
