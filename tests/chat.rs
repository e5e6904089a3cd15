//! The call's text chat, through `metaclinic dev` (one process: signaling and an SFU node,
//! its log captured with our own code at debug level) and real WebRTC participants of the
//! client library: the patient's line reaches the doctor and the interpreter, not the
//! companion waiting in the lobby nor anyone in another consultation; a line over the size
//! limit is refused with `chat_too_long`; a burst is cut by `chat_rate_limited`; a host turns
//! the chat off and on; and nothing of any line is in the log or the audit file.

mod common;

use std::time::{Duration, Instant};

use common::dev::start_dev_logged;
use metaclinic_loadtest::{
    ClientDriver, ParticipantSpec, Phase, SignalingParticipant, join::dev_token,
};
use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
/// How long to listen for a line that must not arrive.
const QUIET: Duration = Duration::from_secs(2);
const APPOINTMENT: &str = "demo-consult";
const OTHER_APPOINTMENT: &str = "demo-interpreter-invite";
const DOCTOR: &str = "Practitioner/dr-demo";
const PATIENT: &str = "Patient/pat-demo";
const INTERPRETER: &str = "Practitioner/interp-demo";
const COMPANION: &str = "RelatedPerson/family-demo";

/// What a patient types: a hotel, a medicine, a name in Hangul; each piece is looked for in
/// the log and the audit file afterwards.
const LINE: &str = "Hotel Sunflower room 1204, Amoxicillin 500 mg, 김민준";
const SECRETS: [&str; 3] = ["Sunflower", "Amoxicillin", "김민준"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_the_call_only_is_bounded_and_leaves_no_trace() {
    tokio::time::timeout(Duration::from_secs(180), chat())
        .await
        .expect("the chat test finished within 3 minutes");
}

/// The next `error` code `p` hears within `T`.
async fn error_code(p: &mut SignalingParticipant) -> String {
    match p
        .wait_for(T, |m| matches!(m, ServerMessage::Error { .. }))
        .await
    {
        Some(ServerMessage::Error { code, .. }) => code,
        other => panic!("{}: no error within {T:?} ({other:?})", p.name),
    }
}

/// `p` still has its session: a ping is answered.
async fn alive(p: &mut SignalingParticipant) {
    p.send(ClientMessage::Ping);
    let pong = p.wait_for(T, |m| matches!(m, ServerMessage::Pong)).await;
    assert!(pong.is_some(), "{}: the session closed", p.name);
}

async fn chat() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev_logged(dir.path().join("dev.log")).await;
    let audit_path = audit_path(&dev.banner);
    let ws = format!("{}/v1/ws", dev.base.replace("http://", "ws://"));
    let driver = ClientDriver::start("chat").unwrap();
    let join = |appointment: &'static str, who: &'static str| {
        let (driver, ws, base) = (&driver, ws.clone(), dev.base.clone());
        async move {
            let token = dev_token(&base, who).await.unwrap();
            let spec = ParticipantSpec::new(who).with_tone(440);
            SignalingParticipant::join(driver, &ws, appointment, &token, None, spec)
                .await
                .unwrap()
        }
    };
    let mut doctor = join(APPOINTMENT, DOCTOR).await;
    assert!(matches!(doctor.phase(), Phase::InCall(_)));
    let mut patient = join(APPOINTMENT, PATIENT).await;
    let mut interpreter = join(APPOINTMENT, INTERPRETER).await;
    let mut companion = join(APPOINTMENT, COMPANION).await;
    // The same doctor, in another consultation at the same time.
    let mut elsewhere = join(OTHER_APPOINTMENT, DOCTOR).await;
    assert!(matches!(elsewhere.phase(), Phase::InCall(_)));
    for who in [PATIENT, INTERPRETER] {
        doctor.send(ClientMessage::Admit {
            participant: who.into(),
        });
    }
    for p in [&mut patient, &mut interpreter] {
        let phase = p.wait_phase(T, |p| matches!(p, Phase::InCall(_))).await;
        assert!(matches!(phase, Phase::InCall(_)), "{phase:?}");
    }
    assert_eq!(companion.phase(), Phase::Lobby);

    // The patient's line reaches the doctor and the interpreter (and comes back to the
    // patient as the confirmation), as typed.
    patient.chat(LINE);
    let expected = Some((PATIENT.to_owned(), LINE.to_owned()));
    for p in [&mut doctor, &mut interpreter, &mut patient] {
        assert_eq!(p.next_chat(T).await, expected, "{}", p.name);
    }
    // Not the companion in the lobby, not the other consultation.
    assert_eq!(companion.next_chat(QUIET).await, None);
    assert_eq!(elsewhere.next_chat(Duration::from_millis(100)).await, None);
    // Nor may the companion, waiting, send one.
    companion.chat("hello from the lobby");
    assert_eq!(error_code(&mut companion).await, "not_in_call");
    assert_eq!(doctor.next_chat(QUIET).await, None);

    // Over the size limit: refused with its code, the session goes on, nobody hears it.
    patient.chat(&"가".repeat(501));
    assert_eq!(error_code(&mut patient).await, "chat_too_long");
    alive(&mut patient).await;
    assert_eq!(doctor.next_chat(QUIET).await, None);

    // A burst: the first lines pass, then `chat_rate_limited`; far fewer arrive than sent.
    let started = Instant::now();
    let sent = 20;
    for i in 0..sent {
        patient.chat(&format!("burst {i}"));
    }
    assert_eq!(error_code(&mut patient).await, "chat_rate_limited");
    let mut arrived = 0;
    while doctor.next_chat(QUIET).await.is_some() {
        arrived += 1;
    }
    // 5 at once, then one a second (PROTOCOL.md, "Chat"), over however long this took.
    let allowed = 5 + started.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=allowed).contains(&arrived) && arrived < sent,
        "{arrived} of {sent} lines arrived (at most {allowed} allowed)"
    );

    // The host turns the chat off: everyone in the call hears it; lines are refused.
    doctor.allow_chat(false);
    for p in [&mut patient, &mut interpreter] {
        let off = p
            .wait_for(T, |m| matches!(m, ServerMessage::ChatAllowed { .. }))
            .await;
        assert_eq!(
            off,
            Some(ServerMessage::ChatAllowed { allowed: false }),
            "{}",
            p.name
        );
    }
    interpreter.chat("the spelling is");
    assert_eq!(error_code(&mut interpreter).await, "chat_off");
    assert_eq!(doctor.next_chat(QUIET).await, None);
    // Only a host may turn it on again.
    patient.allow_chat(true);
    assert_eq!(error_code(&mut patient).await, "not_host");
    doctor.allow_chat(true);
    let on = interpreter
        .wait_for(T, |m| matches!(m, ServerMessage::ChatAllowed { .. }))
        .await;
    assert_eq!(on, Some(ServerMessage::ChatAllowed { allowed: true }));
    tokio::time::sleep(Duration::from_secs(1)).await; // the interpreter's bucket is full anyway
    interpreter.chat("S-U-N-F-L-O-W-E-R");
    assert_eq!(
        doctor.next_chat(T).await,
        Some((INTERPRETER.to_owned(), "S-U-N-F-L-O-W-E-R".to_owned()))
    );

    for p in [patient, interpreter, companion, elsewhere, doctor] {
        p.leave().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Nothing of any line in the log, nor in the audit file; the audit knows only that the
    // patient and the interpreter sent lines, and that the host switched the chat.
    let log = dev.log();
    assert!(log.contains("joined"), "the log was captured: {log}");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    for secret in SECRETS
        .iter()
        .chain(&["S-U-N-F-L-O-W-E-R", "burst 1", "가가가"])
    {
        assert!(!log.contains(secret), "{secret} is in the log");
        assert!(!audit.contains(secret), "{secret} is in the audit file");
    }
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent_by = |who: &str| {
        records
            .iter()
            .filter(|r| {
                r["action"] == "chat" && r["fhir_user"].as_str().is_some_and(|u| u.ends_with(who))
            })
            .count()
    };
    assert!(
        sent_by(PATIENT) >= 2,
        "the patient's lines are audited as sent"
    );
    assert!(sent_by(INTERPRETER) >= 1);
    for action in ["chat_off", "chat_on"] {
        assert!(
            records
                .iter()
                .any(|r| r["action"] == action && r["outcome"] == "ok"),
            "{action} is audited"
        );
    }
}

/// The audit log's path, as the dev banner prints it.
fn audit_path(banner: &str) -> std::path::PathBuf {
    let line = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("audit log"))
        .unwrap_or_else(|| panic!("no audit log in the banner: {banner}"));
    let path = line.trim().split("  ").next().unwrap_or_default();
    std::path::PathBuf::from(path)
}
