//! Every refusal of a client that has not proved who it is leaves an audit record (the
//! address, the reason, a reference to the appointment asked about, never the bytes it sent),
//! and a flood of them from one address leaves a bounded number of records whose counts add
//! up to the flood.

mod common;

use std::time::{Duration, Instant};

use common::standalone::Standalone;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Send `text` as the first message; the `error` code the server answers with.
async fn refused_code(s: &Standalone, text: String) -> String {
    let (mut ws, _) = tokio_tungstenite::connect_async(&s.ws_url).await.unwrap();
    ws.send(Message::Text(text.into())).await.unwrap();
    next_error(&mut ws).await
}

async fn next_error(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        match frame
            .expect("an answer")
            .expect("an error before the close")
        {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                return v["code"].as_str().unwrap().to_owned();
            }
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The audit records with `reason`, once `done` holds for them (bounded: 10 s).
async fn records(s: &Standalone, reason: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = s
            .audit()
            .into_iter()
            .filter(|r| r["reason"] == reason)
            .collect();
        if done(&found) || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_before_a_join_is_audited() {
    let s = Standalone::start(&[
        ("METACLINIC_SIGNALING__LIMITS__JOIN_TIMEOUT_S", "1"),
        (
            "METACLINIC_SIGNALING__AUDIT__REFUSAL_SUMMARY_INTERVAL_S",
            "60",
        ),
    ])
    .await;

    // The access check without a token.
    let r = reqwest::get(format!("{}/v1/appointments/tele-1/access", s.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // On the WebSocket: each kind of refusal a client can provoke before it joins.
    let join = |extra: Value| {
        let mut j = json!({"type": "join", "v": 1, "appointment": "tele-1", "token": "x.y.z"});
        j.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        j.to_string()
    };
    let hostile = "../../etc/<script>\u{1b}[31m";
    let version = refused_code(&s, join(json!({"v": 2, "appointment": hostile}))).await;
    assert_eq!(version, "unsupported_version");
    let first = refused_code(&s, r#"{"type":"ping"}"#.into()).await;
    assert_eq!(first, "join_first");
    let claimed = refused_code(&s, join(json!({"role": "host"}))).await;
    assert_eq!(claimed, "bad_message");
    let junk = refused_code(&s, "{not json".into()).await;
    assert_eq!(junk, "malformed_json");
    let huge = format!(
        "{{\"type\":\"join\",\"token\":\"{}\"}}",
        "a".repeat(100_000)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&s.ws_url).await.unwrap();
    let _ = ws.send(Message::Text(huge.into())).await;
    assert_eq!(next_error(&mut ws).await, "message_too_large");
    let (mut ws, _) = tokio_tungstenite::connect_async(&s.ws_url).await.unwrap();
    assert_eq!(next_error(&mut ws).await, "join_timeout");

    for (reason, action) in [
        ("token_missing", "access_check"),
        ("unsupported_version", "join"),
        ("join_first", "join"),
        ("bad_message", "join"),
        ("malformed_json", "join"),
        ("message_too_large", "join"),
        ("join_timeout", "join"),
    ] {
        let found = records(&s, reason, |r| !r.is_empty()).await;
        assert_eq!(found.len(), 1, "{reason}: {found:#?}");
        let r = &found[0];
        assert_eq!(
            (r["action"].as_str(), r["outcome"].as_str()),
            (Some(action), Some("deny")),
            "{r}"
        );
        assert_eq!(r["client_ip"], "127.0.0.1", "{r}");
    }
    let access = &records(&s, "token_missing", |_| true).await[0];
    assert_eq!(access["appointment"], "Appointment/tele-1");
    let version = &records(&s, "unsupported_version", |_| true).await[0];
    // The appointment a client named is a reference or "invalid", never its bytes.
    assert_eq!(version["appointment"], "Appointment/invalid");
    let text = std::fs::read_to_string(&s.audit_path).unwrap();
    for raw in ["<script>", "\u{1b}", "\\u001b", "\"role\"", "aaaaaaaa"] {
        assert!(
            !text.contains(raw),
            "the audit log holds a client's bytes: {raw}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_summarised() {
    let s = Standalone::start(&[(
        "METACLINIC_SIGNALING__AUDIT__REFUSAL_SUMMARY_INTERVAL_S",
        "2",
    )])
    .await;
    const FLOOD: u64 = 300;
    let started = Instant::now();
    for _ in 0..FLOOD {
        let code = refused_code(&s, r#"{"type":"ping"}"#.into()).await;
        assert_eq!(code, "join_first");
    }
    let flood_took = started.elapsed();
    // All of them, once the interval in progress has been written.
    let count = |r: &Value| r["count"].as_u64().unwrap_or(1);
    let found = records(&s, "join_first", |r| {
        r.iter().map(count).sum::<u64>() == FLOOD
    })
    .await;
    assert_eq!(found.iter().map(count).sum::<u64>(), FLOOD, "{found:#?}");
    // One record at the start of each interval the flood lasted, one summary at its end.
    let intervals = flood_took.as_secs() / 2 + 2;
    assert!(
        found.len() as u64 <= 2 * intervals,
        "{} records for {FLOOD} refusals in {flood_took:?}",
        found.len()
    );
    assert!(found.iter().any(|r| count(r) > 1), "{found:#?}");
    let summarised = s
        .metric(
            "metaclinic_signaling_audit_refusals_summarised_total",
            "reason=\"join_first\"",
        )
        .await;
    let in_summaries: u64 = found.iter().filter_map(|r| r["count"].as_u64()).sum();
    assert_eq!(summarised as u64, in_summaries);
}
