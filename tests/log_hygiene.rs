//! What an outsider sends never reaches signaling's log as it is, and what an outsider can
//! make it log is bounded: a flood of hostile requests (control characters and forged log
//! lines in every field a client controls, tokens that make it look for keys, slow headers,
//! refused connections) leaves a handful of log lines, none carrying the client's bytes.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::standalone::Standalone;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// What a client would like to see in the log: a line of its own, coloured.
const FORGED: &str = "\n2026-01-01T00:00:00Z  INFO forged: admin logged in\u{1b}[31m";

/// A token that parses, names a key nobody has and carries the forged line everywhere.
fn hostile_token() -> String {
    let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let header = b64(json!({"alg": "ES256", "kid": FORGED, "typ": FORGED}));
    let claims =
        b64(json!({"iss": FORGED, "sub": FORGED, "fhirUser": FORGED, "exp": 4_000_000_000u64}));
    format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_stays_out_of_the_log_and_its_lines_are_bounded() {
    let s = Standalone::start(&[
        ("METACLINIC_SIGNALING__HTTP__HEADER_READ_TIMEOUT_MS", "300"),
        (
            "METACLINIC_SIGNALING__LIMITS__MAX_UNJOINED_PER_ADDRESS",
            "3",
        ),
    ])
    .await;
    let before = s.log().lines().count();
    let http = reqwest::Client::new();
    for _ in 0..50 {
        // The access check with a token that makes it look for a key (at a JWKS that does
        // not answer).
        let _ = http
            .get(format!("{}/v1/appointments/a%0A%1B/access", s.base))
            .bearer_auth(hostile_token())
            .header("user-agent", "agent\t(forged) \u{e9}")
            .send()
            .await;
    }
    for _ in 0..30 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&s.ws_url).await.unwrap();
        let join = json!({"type": "join", "v": 1, "appointment": FORGED, "token": hostile_token(), "invite": FORGED});
        let _ = ws.send(Message::Text(join.to_string().into())).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(&s.ws_url).await.unwrap();
        let _ = ws.send(Message::Text(FORGED.into())).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    }
    // Refused for holding too many unjoined sockets, and slow headers.
    let mut held = Vec::new();
    for _ in 0..10 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&s.ws_url).await {
            held.push(ws);
        }
    }
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nX-Forged: \x1b[31m")
            .await;
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let log = s.log();
    let new: Vec<&str> = log.lines().skip(before).collect();
    println!(
        "{} log lines for about 200 hostile requests:\n{}",
        new.len(),
        new.join("\n")
    );
    // (The log's own colours are escape sequences too; the client's is red.)
    assert!(
        !log.contains("\u{1b}[31m"),
        "a client's escape sequence reached the log"
    );
    assert!(
        !log.contains("forged: admin"),
        "a forged line reached the log"
    );
    assert!(new.len() <= 10, "{} lines", new.len());
    drop((held, slow));
}
