//! The reference web client, checked by a tool: axe-core (tests/browser, pinned by its
//! package-lock.json; `scripts/test` installs it with `npm ci`) runs inside headless Chromium
//! on every screen a patient and a clinician see: the device check, the lobby, the
//! consultation (the host's view with its controls and the patient's) and the shared room,
//! in English and in Arabic (right to left). No rule of WCAG 2 A or AA may be broken with a
//! serious or critical impact; what breaks is printed with the elements concerned.

mod common;

use std::time::Duration;

use common::browser::{Browser, Page};
use common::web::{click, dev_token, start_dev, wait_for};
use serde_json::Value;

const DOCTOR: &str = "Practitioner/dr-demo";
const PATIENT: &str = "Patient/pat-demo";
const INTERPRETER: &str = "Practitioner/interp-demo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_screen_passes_axe_in_english_and_arabic() {
    tokio::time::timeout(Duration::from_secs(300), screens())
        .await
        .expect("the accessibility check finished within 5 minutes");
}

/// axe-core's script, installed by `npm ci` in tests/browser.
fn axe_source() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/node_modules/axe-core/axe.min.js"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("{path}: {e}; install it with `npm ci --prefix tests/browser` (scripts/test does)")
    })
}

/// Run axe on the page as it is now (WCAG 2 A and AA rules) and fail on any serious or
/// critical violation, naming each with the elements that break it.
async fn check(page: &Page, screen: &str) {
    if page.eval("typeof axe").await != "object" {
        page.eval(&axe_source()).await;
    }
    // Let the page settle (fonts, the status line) before it is judged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let found = page
        .eval(
            "axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa'] } })
               .then((r) => ({
                 passes: r.passes.length,
                 violations: r.violations
                   .filter((v) => v.impact === 'serious' || v.impact === 'critical')
                   .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                     nodes: v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary}`) })),
               }))",
        )
        .await;
    let violations = found["violations"].as_array().cloned().unwrap_or_default();
    assert!(
        found["passes"].as_u64().unwrap_or(0) > 10,
        "{screen}: axe checked hardly anything: {found:#}"
    );
    assert!(
        violations.is_empty(),
        "{screen}: serious or critical accessibility violations:\n{}",
        serde_json::to_string_pretty(&Value::Array(violations)).unwrap()
    );
    println!(
        "axe: {screen}: no serious or critical violations ({} rules passed)",
        found["passes"]
    );
}

/// Open a join link (with `?lang=` when given) and wait for the device check.
async fn open_link(
    browser: &Browser,
    base: &str,
    appointment: &str,
    who: &str,
    lang: Option<&str>,
) -> Page {
    let token = dev_token(base, who).await;
    let lang = lang.map(|l| format!("&lang={l}")).unwrap_or_default();
    let page = browser
        .open(&format!(
            "{base}/?appointment={appointment}{lang}#token={token}"
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

async fn admit(browser: &Browser, host: &Page, who: &str) {
    let button = format!("#waiting [data-action=admit][data-participant='{who}']");
    wait_for(
        browser,
        host,
        &format!("document.querySelector(\"{button}\")"),
        20,
    )
    .await;
    click(host, &button).await;
}

/// Switch a page's language with its picker, as a person does.
async fn pick_language(browser: &Browser, page: &Page, code: &str) {
    page.eval(&format!(
        "(() => {{ const s = document.getElementById('language'); s.value = '{code}'; s.dispatchEvent(new Event('change')); }})()"
    ))
    .await;
    wait_for(
        browser,
        page,
        &format!("metaclinic.language() === '{code}'"),
        10,
    )
    .await;
}

async fn screens() {
    let (_dev, base) = start_dev().await;
    let browser = Browser::launch_with(&[
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ])
    .await;

    // The clinician's consultation, with host controls and someone waiting.
    let doctor = open_link(&browser, &base, "demo-consult", DOCTOR, Some("en")).await;
    click(&doctor, "#join").await;
    wait_for(&browser, &doctor, "metaclinic.view() === 'call'", 20).await;

    // The patient, in English: the device check, the lobby, the consultation.
    let patient = open_link(&browser, &base, "demo-consult", PATIENT, Some("en")).await;
    // The check finds what it looks for: a button without a name is critical.
    patient
        .eval("document.querySelector('#precall .actions').append(Object.assign(document.createElement('button'), { id: 'nameless' }))")
        .await;
    let caught = std::panic::AssertUnwindSafe(check(&patient, "a nameless button"));
    let caught = futures_util::FutureExt::catch_unwind(caught).await;
    let message = caught.expect_err("axe let a nameless button pass");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("button-name") && message.contains("#nameless"),
        "{message}"
    );
    patient
        .eval("document.getElementById('nameless').remove()")
        .await;
    check(&patient, "device check (English)").await;
    click(&patient, "#join").await;
    wait_for(&browser, &patient, "metaclinic.view() === 'lobby'", 20).await;
    check(&patient, "lobby (English)").await;
    wait_for(
        &browser,
        &doctor,
        "document.querySelector('#waiting [data-action=admit]')",
        20,
    )
    .await;
    check(&doctor, "consultation, host with someone waiting (English)").await;
    admit(&browser, &doctor, PATIENT).await;
    wait_for(&browser, &patient, "metaclinic.view() === 'call'", 20).await;
    wait_for(&browser, &patient, "metaclinic.tiles().length >= 2", 20).await;
    check(&patient, "consultation, patient (English)").await;

    // The interpreter, in Arabic from the link: the same screens, right to left.
    let interpreter = open_link(&browser, &base, "demo-consult", INTERPRETER, Some("ar")).await;
    assert_eq!(
        interpreter.eval("document.documentElement.dir").await,
        "rtl"
    );
    check(&interpreter, "device check (Arabic)").await;
    click(&interpreter, "#join").await;
    wait_for(&browser, &interpreter, "metaclinic.view() === 'lobby'", 20).await;
    check(&interpreter, "lobby (Arabic)").await;
    admit(&browser, &doctor, INTERPRETER).await;
    wait_for(&browser, &interpreter, "metaclinic.view() === 'call'", 20).await;
    wait_for(&browser, &interpreter, "metaclinic.tiles().length >= 3", 20).await;
    check(&interpreter, "consultation, interpreter (Arabic)").await;
    pick_language(&browser, &doctor, "ar").await;
    check(&doctor, "consultation, host (Arabic)").await;

    // The shared room (a map of avatars, spatial audio), in English and in Arabic.
    let room = open_link(&browser, &base, "demo-group", DOCTOR, Some("en")).await;
    click(&room, "#join").await;
    wait_for(
        &browser,
        &room,
        "metaclinic.view() === 'call' && metaclinic.roomKind() === 'shared'",
        20,
    )
    .await;
    wait_for(
        &browser,
        &room,
        "document.querySelectorAll('#room-list li').length > 0",
        20,
    )
    .await;
    check(&room, "shared room (English)").await;
    pick_language(&browser, &room, "ar").await;
    check(&room, "shared room (Arabic)").await;
}
