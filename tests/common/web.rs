//! Helpers of the browser tests: `metaclinic dev` with its banner checked, pages that join
//! from links or the dev start page, bounded waits on page state, clicks, getStats views and
//! screenshots to target/artifacts/.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::browser::{Browser, Page};

/// `metaclinic dev`; its banner must say what to open.
pub async fn start_dev() -> (super::dev::DevProcess, String) {
    let dev = super::dev::start_dev().await;
    let base = dev.base.clone();
    assert!(
        dev.banner
            .contains(&format!("Open {base}/ in two browser windows")),
        "{}",
        dev.banner
    );
    (dev, base)
}

pub async fn dev_token(base: &str, who: &str) -> String {
    metaclinic_loadtest::join::dev_token(base, who)
        .await
        .unwrap()
}

/// Poll `expression` on `page` until it is truthy (not false, null, 0 or "").
pub async fn wait_for(browser: &Browser, page: &Page, expression: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = page.eval(expression).await;
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let status = page.eval("metaclinic.status()").await;
            panic!(
                "waited {secs} s for `{expression}` (last {v}); page status {status}\nconsole: {:#?}",
                browser.console.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn click(page: &Page, selector: &str) {
    let found = page
        .eval(&format!(
            "(() => {{ const b = document.querySelector({}); if (b) b.click(); return !!b; }})()",
            json!(selector)
        ))
        .await;
    assert_eq!(found, json!(true), "nothing to click at {selector}");
}

/// What a page receives from `from`: (packets, framesDecoded) of that kind.
pub async fn inbound(page: &Page, from: &str, kind: &str) -> (u64, u64) {
    let stats = page.eval("metaclinic.stats()").await;
    stats["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind && s["participant"] == from)
        .fold((0, 0), |(p, f), s| {
            (
                p + s["packets"].as_u64().unwrap_or(0),
                f + s["framesDecoded"].as_u64().unwrap_or(0),
            )
        })
}

/// Wait until `page` decodes audio and video from `from`.
pub async fn wait_for_media(browser: &Browser, page: &Page, from: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (audio, _) = inbound(page, from, "audio").await;
        let (video, frames) = inbound(page, from, "video").await;
        if audio > 20 && video > 10 && frames > 5 {
            return;
        }
        if Instant::now() > deadline {
            let stats = page.eval("metaclinic.stats()").await;
            panic!(
                "no audio and video from {from} within {secs} s: {stats:#}\nconsole: {:#?}",
                browser.console.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Open a join link to `appointment`, pass the pre-call check and join.
pub async fn join_from_link(browser: &Browser, base: &str, appointment: &str, token: &str) -> Page {
    let page = browser
        .open(&format!("{base}/?appointment={appointment}#token={token}"))
        .await;
    join_from_precall(browser, &page).await;
    page
}

pub async fn join_from_precall(browser: &Browser, page: &Page) {
    wait_for(
        browser,
        page,
        "metaclinic.view() === 'precall' && metaclinic.status().includes('ready')",
        20,
    )
    .await;
    click(page, "#join").await;
}

pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn screenshot(page: &Page, name: &str, width: u32, height: u32) {
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let png = page.screenshot().await;
    assert!(png.len() > 1000, "an empty screenshot");
    let path = artifacts().join(name);
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

/// The doctor and the patient of `demo-consult` in two pages opened with `?relay=1` (the
/// client then takes no path but a TURN server from its `ice_servers`), the patient let in,
/// each receiving the other's audio and video.
pub async fn relay_only_consultation(base: &str) -> (Browser, Page, Page) {
    let browser = Browser::launch_with(&[
        "--ignore-certificate-errors",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ])
    .await;
    let open = |who: &'static str| {
        let browser = &browser;
        async move {
            let token = dev_token(base, who).await;
            let page = browser
                .open(&format!(
                    "{base}/?appointment=demo-consult&relay=1#token={token}"
                ))
                .await;
            join_from_precall(browser, &page).await;
            page
        }
    };
    let doctor = open("Practitioner/dr-demo").await;
    wait_for(&browser, &doctor, "metaclinic.view() === 'call'", 20).await;
    let patient = open("Patient/pat-demo").await;
    wait_for(
        &browser,
        &doctor,
        "document.querySelector(\"#waiting [data-participant='Patient/pat-demo']\")",
        20,
    )
    .await;
    click(
        &doctor,
        "#waiting [data-action=admit][data-participant='Patient/pat-demo']",
    )
    .await;
    wait_for(&browser, &patient, "metaclinic.view() === 'call'", 20).await;
    wait_for_media(&browser, &doctor, "Patient/pat-demo", 40).await;
    wait_for_media(&browser, &patient, "Practitioner/dr-demo", 40).await;
    (browser, doctor, patient)
}

/// Both pages say they connected through a relay reached over `transport` (`udp`, `tcp`,
/// `tls`), and their pre-call checks found exactly that way to a relay.
pub async fn assert_relayed_over(browser: &Browser, pages: [&Page; 2], transport: &str) {
    for page in pages {
        wait_for(
            browser,
            page,
            &format!("metaclinic.way() === 'relay-{transport}'"),
            20,
        )
        .await;
        wait_for(
            browser,
            page,
            &format!("JSON.stringify(metaclinic.relayWays()) === '[\"{transport}\"]'"),
            20,
        )
        .await;
    }
}
