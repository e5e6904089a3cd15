//! Signaling at its edges: the HTTP pre-check, the booking system down, SMART Backend
//! Services against a token endpoint that checks our assertion, hostile WebSocket input,
//! and the audit chain catching an edited line.

mod common;

use std::time::Duration;

use common::signaling::{Harness, fixture_now};
use futures_util::{SinkExt, StreamExt};
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant};
use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(15);

async fn access(h: &Harness, appointment: &str, token: Option<&str>) -> (u16, Value) {
    let mut req =
        reqwest::Client::new().get(format!("{}/v1/appointments/{appointment}/access", h.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_check_answers_without_joining() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    h.fhir
        .put(fixture_now("appointment-telehealth-declined", 30));

    let (s, b) = access(&h, "tele-interp-1", Some(&h.token("Practitioner/prac-77"))).await;
    assert_eq!(
        (s, b.clone()),
        (
            200,
            json!({ "role": "host", "admission": "direct", "ice_servers": [] })
        ),
        "{b}"
    );
    let (s, b) = access(
        &h,
        "Appointment%2Ftele-interp-1",
        Some(&h.token("Patient/pat-1042")),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({ "role": "patient", "admission": "lobby", "ice_servers": [] })
        )
    );
    let (s, b) = access(&h, "tele-interp-1", Some(&h.token("RelatedPerson/rp-3"))).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({ "role": "companion", "admission": "lobby", "ice_servers": [] })
        )
    );
    let (s, b) = access(&h, "tele-interp-1", Some(&h.token("Practitioner/interp-9"))).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({ "role": "interpreter", "admission": "lobby", "ice_servers": [] })
        )
    );
    // Whatever a valid token says, another appointment's participant is nobody here.
    let (s, b) = access(&h, "tele-interp-1", Some(&h.token("Patient/pat-3003"))).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (403, json!("not_a_participant"))
    );
    let (s, b) = access(&h, "tele-declined", Some(&h.token("Patient/pat-3003"))).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (403, json!("participant_declined"))
    );
    let (s, b) = access(&h, "tele-interp-1", None).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (401, json!("token_missing"))
    );
    let (s, b) = access(&h, "tele-interp-1", Some("not.a.jwt")).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (401, json!("token_malformed"))
    );
    let (s, b) = access(
        &h,
        "no-such-appointment",
        Some(&h.token("Patient/pat-1042")),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (404, json!("appointment_not_found"))
    );
    let (s, b) = access(&h, "..%2F..%2Fetc", Some(&h.token("Patient/pat-1042"))).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (404, json!("appointment_not_found"))
    );

    // Checking joins nobody, and every decision is audited.
    let audit = h.audit();
    assert!(
        audit
            .iter()
            .filter(|r| r["action"] == "access_check")
            .count()
            >= 8,
        "{audit:#?}"
    );
    assert!(audit.iter().any(|r| r["action"] == "access_check"
        && r["reason"] == "participant_declined"
        && r["fhir_user"] == "Patient/pat-3003"));

    // Our SMART client assertions were all accepted, and the access token was reused.
    assert_eq!(h.fhir.refused_assertions(), 0);
    assert_eq!(h.fhir.token_requests(), 1, "one access token for all reads");
    assert!(h.fhir.reads() >= 6, "{} reads", h.fhir.reads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_booking_system_is_down_nobody_gets_in() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    h.fhir.set_down(true);
    let (s, b) = access(&h, "tele-interp-1", Some(&h.token("Practitioner/prac-77"))).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (503, json!("booking_unavailable")),
        "{b}"
    );
    let driver = ClientDriver::start("down").unwrap();
    let doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token("Practitioner/prac-77"),
        None,
        ParticipantSpec::new("d"),
    )
    .await
    .unwrap();
    assert_eq!(doctor.phase(), Phase::Closed("booking_unavailable".into()));
    // Back up: joins work again.
    h.fhir.set_down(false);
    let doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token("Practitioner/prac-77"),
        None,
        ParticipantSpec::new("d"),
    )
    .await
    .unwrap();
    assert!(
        matches!(doctor.phase(), Phase::InCall(_)),
        "{:?}",
        doctor.phase()
    );
    let audit = h.audit();
    assert!(audit.iter().any(|r| r["action"] == "join"
        && r["reason"] == "booking_unavailable"
        && r["outcome"] == "deny"));
}

async fn ws(
    h: &Harness,
) -> (
    futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Message,
    >,
    futures_util::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
) {
    let (ws, _) = tokio_tungstenite::connect_async(&h.ws_url).await.unwrap();
    ws.split()
}

/// The next JSON message (or None at close / timeout).
async fn next_json(
    stream: &mut futures_util::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
) -> Option<Value> {
    loop {
        match tokio::time::timeout(T, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Err(_) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_input_gets_clear_errors_and_spares_the_others() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    let driver = ClientDriver::start("hostile-ws").unwrap();
    // A consultation in progress that must not notice any of this.
    let mut doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token("Practitioner/prac-77"),
        None,
        ParticipantSpec::new("Practitioner/prac-77").with_tone(440),
    )
    .await
    .unwrap();

    // Before joining: garbage is refused and the connection closes.
    let (mut tx, mut rx) = ws(&h).await;
    tx.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "malformed_json");
    let (mut tx, mut rx) = ws(&h).await;
    tx.send(Message::Text(
        r#"{"type":"sdp","description":{"type":"offer","sdp":"v=0"}}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "join_first");

    // A joined patient (in the lobby) tries things.
    let (mut tx, mut rx) = ws(&h).await;
    let join = json!({"type": "join", "v": 1, "appointment": "tele-interp-1", "token": h.token("Patient/pat-1042")});
    tx.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["type"], "lobby");
    let bad = |m: &str| Message::Text(m.to_owned().into());
    tx.send(bad("{not json")).await.unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "malformed_json");
    tx.send(bad(r#"{"type":"make_me_host"}"#)).await.unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "unknown_type");
    // SDP aimed at someone else's session: the protocol has no such field.
    tx.send(bad(r#"{"type":"sdp","participant":"Practitioner/prac-77","description":{"type":"offer","sdp":"v=0"}}"#)).await.unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "bad_message");
    // Its own SDP, before a host admitted it.
    tx.send(bad(
        r#"{"type":"sdp","description":{"type":"offer","sdp":"v=0"}}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "not_in_call");
    tx.send(bad(
        r#"{"type":"video_preference","track":"t1","max_quality":"low"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "not_in_call");
    tx.send(bad(r#"{"type":"end"}"#)).await.unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "not_host");
    tx.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["code"], "bad_message");

    // A flood: rate limited, then cut off.
    let mut codes = Vec::new();
    for _ in 0..400 {
        if tx.send(bad(r#"{"type":"ping"}"#)).await.is_err() {
            break;
        }
    }
    while let Some(v) = next_json(&mut rx).await {
        if let Some(c) = v["code"].as_str() {
            codes.push(c.to_owned());
        }
    }
    assert!(codes.contains(&"rate_limited".to_owned()), "{codes:?}");
    assert!(codes.contains(&"flooding".to_owned()), "{codes:?}");

    // An oversized message closes that connection, and only that one.
    let (mut tx, mut rx) = ws(&h).await;
    let join = json!({"type": "join", "v": 1, "appointment": "tele-interp-1", "token": h.token("RelatedPerson/rp-3")});
    tx.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut rx).await.unwrap()["type"], "lobby");
    let huge = format!(
        r#"{{"type":"sdp","description":{{"type":"offer","sdp":"{}"}}}}"#,
        "a".repeat(200_000)
    );
    let _ = tx.send(Message::Text(huge.into())).await;
    let mut closed = false;
    for _ in 0..5 {
        match next_json(&mut rx).await {
            None => {
                closed = true;
                break;
            }
            Some(v) if v["code"] == "message_too_large" => {}
            Some(_) => {}
        }
    }
    assert!(closed, "an oversized message must close the connection");

    // The doctor's session saw none of it and still answers.
    doctor.send(ClientMessage::Ping);
    assert!(
        doctor
            .wait_for(T, |m| matches!(m, ServerMessage::Pong))
            .await
            .is_some()
    );
    assert!(matches!(doctor.phase(), Phase::InCall(_)));
    let m = reqwest::get(format!("{}/metrics", h.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("metaclinic_signaling_ws_refused_total{code=\"rate_limited\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_an_edited_line() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-declined", 30));
    for who in ["Patient/pat-3003", "Practitioner/prac-77", "Patient/nobody"] {
        access(&h, "tele-declined", Some(&h.token(who))).await;
    }
    let verify = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_metaclinic"))
            .args(["audit", "verify", "--key-file"])
            .arg(&h.audit_key)
            .arg("--checkpoint")
            .arg(&h.audit_checkpoint)
            .arg(path)
            .output()
            .unwrap()
    };
    let ok = verify(&h.audit_path);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 records"));
    // Someone turns a denial into an allow.
    let copy = h.audit_path.with_extension("edited");
    let text = std::fs::read_to_string(&h.audit_path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[0].contains("\"outcome\":\"deny\""));
    lines[0] = lines[0].replace("\"outcome\":\"deny\"", "\"outcome\":\"allow\"");
    std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
    let bad = verify(&copy);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
