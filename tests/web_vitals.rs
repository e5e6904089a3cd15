//! Vitals in the reference web client (headless Chromium): a Rust patient's simulated device
//! reaches the doctor's page (live values of every kind), not a companion, until the doctor
//! ticks "Companions can see the vital signs"; and a patient's page sends a blood pressure
//! typed in, which reaches a Rust doctor as the patient typed it.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::web::{click, dev_token, join_from_link, screenshot, start_dev, wait_for};
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant, VitalsSpec};
use metaclinic_sfu::vitals::VitalKind;
use metaclinic_signaling::protocol::ClientMessage;

const T: Duration = Duration::from_secs(20);
const DOCTOR: &str = "Practitioner/dr-demo";
const PATIENT: &str = "Patient/pat-demo";
const COMPANION: &str = "RelatedPerson/family-demo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vitals_reach_the_doctors_page_and_the_patients_page_sends_them() {
    tokio::time::timeout(Duration::from_secs(200), run())
        .await
        .expect("the browser vitals test finished within 200 s");
}

async fn run() {
    let (_dev, base) = start_dev().await;
    let ws = format!("{}/v1/ws", base.replace("http://", "ws://"));
    let browser = Browser::launch_with(&[
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ])
    .await;
    let driver = ClientDriver::start("web-vitals").unwrap();
    let rust = |who: &'static str, appointment: &'static str, vitals: VitalsSpec| {
        let (driver, ws, base) = (&driver, ws.clone(), base.clone());
        async move {
            let token = dev_token(&base, who).await;
            let mut spec = ParticipantSpec::new(who).with_tone(440);
            spec.vitals = Some(vitals);
            SignalingParticipant::join(driver, &ws, appointment, &token, None, spec)
                .await
                .unwrap()
        }
    };

    // 1. The doctor's page shows what the patient's device measures.
    let token = dev_token(&base, DOCTOR).await;
    let doctor = join_from_link(&browser, &base, "demo-consult", &token).await;
    wait_for(&browser, &doctor, "metaclinic.view() === 'call'", 20).await;
    let device = VitalsSpec::Device {
        interval: Duration::from_millis(250),
    };
    let mut patient = rust(PATIENT, "demo-consult", device).await;
    let mut companion = rust(COMPANION, "demo-consult", VitalsSpec::Receive).await;
    for who in [PATIENT, COMPANION] {
        let admit = format!("#waiting [data-action=admit][data-participant='{who}']");
        wait_for(
            &browser,
            &doctor,
            &format!("document.querySelector({admit:?})"),
            20,
        )
        .await;
        click(&doctor, &admit).await;
    }
    for p in [&mut patient, &mut companion] {
        let phase = p.wait_phase(T, |p| matches!(p, Phase::InCall(_))).await;
        assert!(matches!(phase, Phase::InCall(_)), "{phase:?}");
    }
    let shown = "['hr','spo2','bp'].every((k) => document.querySelector(`.vitals-value[data-kind=${k}]`).dataset.value)";
    wait_for(&browser, &doctor, shown, 30).await;
    let sent = patient.stats().await.unwrap().vitals_sent;
    for kind in [VitalKind::HeartRate, VitalKind::BloodPressure] {
        let k = if kind == VitalKind::HeartRate {
            "hr"
        } else {
            "bp"
        };
        let on_page = doctor
            .eval(&format!(
                "document.querySelector('.vitals-value[data-kind={k}]').dataset.value"
            ))
            .await;
        let on_page = on_page.as_str().unwrap().to_owned();
        let was_sent = sent.iter().filter(|r| r.kind == kind).any(|r| {
            let values: Vec<String> = r.values.iter().map(|v| v.to_string()).collect();
            values.join("/") == on_page
        });
        assert!(
            was_sent,
            "{k} {on_page} on the page, not among what the device sent"
        );
    }
    screenshot(&doctor, "web-vitals-doctor.png", 1000, 760).await;
    assert!(companion.stats().await.unwrap().vitals_received.is_empty());

    // The doctor shares them with companions.
    click(&doctor, "#share-vitals").await;
    let s = companion
        .wait_media(T, |s| s.vitals_received.len() >= 2)
        .await
        .unwrap();
    assert!(s.vitals_received.iter().all(|r| r.from == PATIENT));
    for p in [patient, companion] {
        p.leave().await;
    }
    doctor
        .eval("document.getElementById('leave').click()")
        .await;

    // 2. A patient's page sends a reading typed in.
    let rust_doctor = rust(DOCTOR, "demo-interpreter-invite", VitalsSpec::Receive).await;
    let token = dev_token(&base, PATIENT).await;
    let page = join_from_link(&browser, &base, "demo-interpreter-invite", &token).await;
    wait_for(&browser, &page, "metaclinic.view() === 'lobby'", 20).await;
    rust_doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    wait_for(&browser, &page, "metaclinic.view() === 'call'", 20).await;
    // Typed until the channel is open: the form says when it was sent.
    let typed = r#"(() => {
        const kind = document.getElementById('vitals-kind');
        kind.value = 'bp';
        kind.dispatchEvent(new Event('change'));
        document.getElementById('vitals-value').value = '131';
        document.getElementById('vitals-value2').value = '84';
        document.getElementById('vitals-form').requestSubmit();
        return document.querySelector('#vitals .vitals-status').textContent === 'Reading sent.';
    })()"#;
    wait_for(&browser, &page, typed, 20).await;
    let s = rust_doctor
        .wait_media(T, |s| !s.vitals_received.is_empty())
        .await
        .unwrap();
    let r = &s.vitals_received[0];
    assert_eq!(r.from, PATIENT);
    assert_eq!(r.reading.kind, VitalKind::BloodPressure);
    assert_eq!(r.reading.values, vec![131.0, 84.0]);
    // An implausible one is not sent.
    let implausible = r#"(() => {
        const kind = document.getElementById('vitals-kind');
        kind.value = 'bp';
        kind.dispatchEvent(new Event('change'));
        document.getElementById('vitals-value').value = '80';
        document.getElementById('vitals-value2').value = '120';
        document.getElementById('vitals-form').requestSubmit();
        return document.querySelector('#vitals .vitals-status').textContent;
    })()"#;
    let said = page.eval(implausible).await;
    assert!(
        said.as_str().unwrap().contains("does not look right"),
        "{said}"
    );
}
