//! A patient from abroad, in the browser (headless Chromium, `metaclinic dev`):
//! - a browser set to Korean (`--lang=ko`) shows Korean throughout the device check, the
//!   lobby and the call: no English word on the screen or in what a screen reader says,
//!   and the appointment's times in the patient's own time zone (Asia/Seoul here) as Korean
//!   writes them; a chat line typed in Hangul and sent with Enter reaches the doctor;
//! - `?lang=ar` on the link lays the page out right to left;
//! - the language picker switches a patient in a call to another language without losing
//!   the call (the same connection, media still arriving).
//!
//! Screenshots of the Korean lobby and the Arabic consultation go to target/artifacts/
//! (docs/screenshots/ holds copies for the README).

mod common;

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Timelike, Utc};
use common::browser::{Browser, Page};
use common::web::{click, dev_token, inbound, screenshot, start_dev, wait_for};
use serde_json::{Value, json};

const DOCTOR: &str = "Practitioner/dr-demo";
const PATIENT: &str = "Patient/pat-demo";

/// Pages in one browser, none throttled as a background tab; `extra` on top.
async fn browser(extra: &[&str]) -> Browser {
    let mut flags = vec![
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ];
    flags.extend_from_slice(extra);
    Browser::launch_with(&flags).await
}

/// A catalogue's text, as the page shows it (placeholders left as they are).
fn catalogue(code: &str) -> Value {
    let path = format!(
        "{}/signaling/web/i18n/{code}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Open a join link and wait for the device check; `lang`: `?lang=` on the link.
async fn open_link(browser: &Browser, base: &str, who: &str, lang: Option<&str>) -> Page {
    let token = dev_token(base, who).await;
    let lang = lang.map(|l| format!("&lang={l}")).unwrap_or_default();
    let page = browser
        .open(&format!(
            "{base}/?appointment=demo-consult{lang}#token={token}"
        ))
        .await;
    wait_for(
        browser,
        &page,
        "metaclinic.view() === 'precall' && metaclinic.devicesChecked()",
        20,
    )
    .await;
    page
}

/// The doctor in the call, the patient let in from the lobby.
async fn admit_patient(browser: &Browser, doctor: &Page) {
    let admit = format!("#waiting [data-action=admit][data-participant='{PATIENT}']");
    wait_for(
        browser,
        doctor,
        &format!("document.querySelector(\"{admit}\")"),
        20,
    )
    .await;
    click(doctor, &admit).await;
}

/// Latin words of three letters or more on the page (its visible text, and the labels a
/// screen reader reads), less what is not English: the brand, units, the language
/// picker's own names and the chat's lines.
async fn latin_words(page: &Page) -> Vec<String> {
    let words = page
        .eval(
            "(() => {
               // Not the picker (each language named in itself), not what people typed.
               const skip = [...document.querySelectorAll('.language, .chat-text')];
               skip.forEach((el) => { el.style.display = 'none'; });
               const text = [document.body.innerText];
               skip.forEach((el) => { el.style.display = ''; });
               for (const el of document.querySelectorAll('[aria-label], [title], [placeholder], [alt]')) {
                 if (el.closest('[hidden]') || el.closest('.language')) continue;
                 for (const a of ['aria-label', 'title', 'placeholder', 'alt']) text.push(el.getAttribute(a) || '');
               }
               return text.join(' ').match(/[A-Za-z]{3,}/g) || [];
             })()",
        )
        .await;
    // Names every language writes the same way: the product, units, keys, protocols.
    const NOT_ENGLISH: &[&str] = &[
        "MetaClinic",
        "kbit",
        "mmHg",
        "Shift",
        "https",
        "UDP",
        "TCP",
        "TLS",
    ];
    words
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| !NOT_ENGLISH.contains(w))
        .map(str::to_owned)
        .collect()
}

/// A time as Korean writes it in Seoul (Intl.DateTimeFormat('ko', {hour: 'numeric',
/// minute: '2-digit'})): "오후 3:05".
fn korean_time(utc: DateTime<Utc>) -> String {
    let seoul = utc.with_timezone(&FixedOffset::east_opt(9 * 3600).unwrap());
    let (pm, hour) = seoul.hour12();
    format!(
        "{} {hour}:{:02}",
        if pm { "오후" } else { "오전" },
        seoul.minute()
    )
}

/// The demo appointment's booked times, as `metaclinic dev` wrote them.
fn demo_times(banner: &str) -> (DateTime<Utc>, DateTime<Utc>) {
    let dir = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("appointments"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no appointments directory in the banner: {banner}"));
    let text = std::fs::read_to_string(format!("{dir}/demo-consult.json")).unwrap();
    let a: Value = serde_json::from_str(&text).unwrap();
    let time = |k: &str| a[k].as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    (time("start"), time("end"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_korean_browser_shows_korean_throughout_the_lobby_and_the_call() {
    tokio::time::timeout(Duration::from_secs(240), korean())
        .await
        .expect("the Korean consultation finished within 4 minutes");
}

async fn korean() {
    let (dev, base) = start_dev().await;
    let ko = catalogue("ko");
    // Headless Chromium takes the interface language from --accept-lang (--lang is for a
    // windowed one); both are given, as a Korean user's browser would have them.
    let browser = browser(&["--lang=ko", "--accept-lang=ko"]).await;
    let doctor = open_link(&browser, &base, DOCTOR, None).await;
    click(&doctor, "#join").await;
    wait_for(&browser, &doctor, "metaclinic.view() === 'call'", 20).await;

    // The patient's browser is in Seoul.
    let token = dev_token(&base, PATIENT).await;
    let patient = browser.open("about:blank").await;
    patient
        .call(
            "Emulation.setTimezoneOverride",
            json!({ "timezoneId": "Asia/Seoul" }),
        )
        .await;
    patient
        .call(
            "Page.navigate",
            json!({ "url": format!("{base}/?appointment=demo-consult#token={token}") }),
        )
        .await;
    wait_for(
        &browser,
        &patient,
        "window.metaclinic && metaclinic.view() === 'precall' && metaclinic.devicesChecked()",
        20,
    )
    .await;
    assert_eq!(patient.eval("metaclinic.language()").await, "ko");
    assert_eq!(patient.eval("document.documentElement.lang").await, "ko");
    assert_eq!(patient.eval("document.title").await, ko["app.title"]);
    assert_eq!(
        patient
            .eval("document.getElementById('precall-title').textContent")
            .await,
        ko["precall.title"]
    );
    assert_eq!(
        latin_words(&patient).await,
        Vec::<String>::new(),
        "English on the device check"
    );

    // The lobby: Korean, with the booked times in Seoul's time, as Korean writes them.
    click(&patient, "#join").await;
    wait_for(&browser, &patient, "metaclinic.view() === 'lobby'", 20).await;
    let lobby = patient
        .eval("document.getElementById('lobby').innerText")
        .await;
    let lobby = lobby.as_str().unwrap();
    assert!(
        lobby.contains(ko["lobby.title"].as_str().unwrap()),
        "{lobby}"
    );
    assert!(
        lobby.contains(ko["lobby.you_are.patient"].as_str().unwrap()),
        "{lobby}"
    );
    let (start, end) = demo_times(&dev.banner);
    for t in [start, end] {
        assert!(
            lobby.contains(&korean_time(t)),
            "{} (Seoul) is not in: {lobby}",
            korean_time(t)
        );
    }
    assert!(
        lobby.contains("분 전"),
        "the start, relative to now (\"5분 전\"): {lobby}"
    );
    assert_eq!(
        latin_words(&patient).await,
        Vec::<String>::new(),
        "English in the lobby"
    );
    screenshot(&patient, "web-i18n-ko-lobby.png", 390, 760).await;

    // The call: Korean everywhere; the end time in Seoul's.
    admit_patient(&browser, &doctor).await;
    wait_for(
        &browser,
        &patient,
        "metaclinic.view() === 'call' && metaclinic.tiles().length >= 2",
        20,
    )
    .await;
    wait_for(
        &browser,
        &patient,
        "document.getElementById('quality').textContent.includes('좋음')",
        30,
    )
    .await;
    let status = patient.eval("metaclinic.status()").await;
    assert!(
        status.as_str().unwrap().starts_with("진료 중입니다."),
        "{status}"
    );
    assert_eq!(
        patient
            .eval("document.getElementById('chat-title').textContent")
            .await,
        ko["chat.title"]
    );
    assert_eq!(
        latin_words(&patient).await,
        Vec::<String>::new(),
        "English in the call"
    );

    // A line in Hangul, typed and sent with Enter, reaches the doctor.
    let line = "서울특별시 종로구 율곡로 1";
    patient
        .eval("document.getElementById('chat-text').focus()")
        .await;
    patient
        .call("Input.insertText", json!({ "text": line }))
        .await;
    for kind in ["keyDown", "keyUp"] {
        patient
            .call(
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r" }),
            )
            .await;
    }
    let seen = format!("metaclinic.chatLines().some((l) => l.text === '{line}' && !l.self)");
    wait_for(&browser, &doctor, &seen, 10).await;
    let mine = format!(
        "metaclinic.chatLines().some((l) => l.text === '{line}' && l.self && l.who === '나')"
    );
    wait_for(&browser, &patient, &mine, 10).await;
    assert_eq!(
        patient
            .eval("document.getElementById('chat-text').value")
            .await,
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arabic_reads_right_to_left_and_the_picker_keeps_the_call() {
    tokio::time::timeout(Duration::from_secs(240), arabic())
        .await
        .expect("the Arabic consultation finished within 4 minutes");
}

async fn arabic() {
    let (_dev, base) = start_dev().await;
    let (ar, ko) = (catalogue("ar"), catalogue("ko"));
    let browser = browser(&[]).await;
    let doctor = open_link(&browser, &base, DOCTOR, Some("en")).await;
    click(&doctor, "#join").await;
    wait_for(&browser, &doctor, "metaclinic.view() === 'call'", 20).await;

    // `?lang=ar` on the link: Arabic, laid out right to left.
    let patient = open_link(&browser, &base, PATIENT, Some("ar")).await;
    assert_eq!(
        patient
            .eval("[document.documentElement.lang, document.documentElement.dir]")
            .await,
        json!(["ar", "rtl"])
    );
    assert_eq!(
        patient
            .eval("getComputedStyle(document.body).direction")
            .await,
        "rtl"
    );
    // The picker sits at the header's inline end: on the left, right to left.
    let sides = patient
        .eval("(() => { const h = document.querySelector('h1').getBoundingClientRect(); const p = document.querySelector('.language').getBoundingClientRect(); return [h.left, p.right]; })()")
        .await;
    assert!(
        sides[1].as_f64() < sides[0].as_f64(),
        "the picker is not left of the title: {sides}"
    );
    click(&patient, "#join").await;
    wait_for(&browser, &patient, "metaclinic.view() === 'lobby'", 20).await;
    admit_patient(&browser, &doctor).await;
    wait_for(
        &browser,
        &patient,
        "metaclinic.view() === 'call' && metaclinic.tiles().length >= 2",
        20,
    )
    .await;
    assert_eq!(
        patient
            .eval("document.getElementById('chat-title').textContent")
            .await,
        ar["chat.title"]
    );
    // The doctor writes in English; the line reads left to right inside the Arabic page.
    doctor
        .eval("document.getElementById('chat-text').value = 'Paracetamol 500 mg'")
        .await;
    click(&doctor, "#chat-send").await;
    wait_for(
        &browser,
        &patient,
        "metaclinic.chatLines().some((l) => l.text === 'Paracetamol 500 mg')",
        10,
    )
    .await;
    let line_dir = patient
        .eval("getComputedStyle(document.querySelector('.chat-text')).direction")
        .await;
    assert_eq!(line_dir, "ltr");
    wait_for(
        &browser,
        &patient,
        "metaclinic.tiles().some((t) => t.video)",
        30,
    )
    .await;
    screenshot(&patient, "web-i18n-ar-consultation.png", 1000, 760).await;

    // The picker: Korean now, in the same call on the same connection.
    let (before, _) = inbound(&patient, DOCTOR, "audio").await;
    patient
        .eval("window.__connection = metaclinic.connection()")
        .await;
    patient
        .eval("(() => { const s = document.getElementById('language'); s.value = 'ko'; s.dispatchEvent(new Event('change')); })()")
        .await;
    wait_for(
        &browser,
        &patient,
        "metaclinic.language() === 'ko' && document.documentElement.dir === 'ltr'",
        10,
    )
    .await;
    assert_eq!(
        patient
            .eval("document.getElementById('chat-title').textContent")
            .await,
        ko["chat.title"]
    );
    let title = patient
        .eval("document.getElementById('leave').textContent")
        .await;
    assert_eq!(title, ko["call.leave"]);
    // The vitals form, made in Arabic when the call began, is said again in Korean.
    assert_eq!(
        patient
            .eval("document.getElementById('vitals-entry-title').textContent")
            .await,
        ko["vitals.enter_title"]
    );
    let arabic = patient
        .eval("[...document.querySelectorAll('#call [data-i18n]')].filter((e) => /[\\u0600-\\u06FF]/.test(e.textContent)).length")
        .await;
    assert_eq!(
        arabic, 0,
        "Arabic left in the call after switching to Korean"
    );
    assert_eq!(patient.eval("metaclinic.view()").await, "call");
    assert_eq!(
        patient
            .eval("metaclinic.connection() === window.__connection && metaclinic.connected()")
            .await,
        true
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = inbound(&patient, DOCTOR, "audio").await;
    assert!(
        after > before + 20,
        "the doctor's audio stopped: {before} -> {after}"
    );
    // Remembered: in the address (a reload keeps it) and for the next visit.
    let href = patient.eval("location.href").await;
    assert!(href.as_str().unwrap().contains("lang=ko"), "{href}");
    assert_eq!(
        patient
            .eval("localStorage.getItem('metaclinic.lang')")
            .await,
        "ko"
    );
    assert_eq!(
        latin_words(&patient).await,
        Vec::<String>::new(),
        "English after switching to Korean"
    );
}
