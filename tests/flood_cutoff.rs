//! PROTOCOL.md: a sustained flood closes the connection. A joined client that sends 100
//! messages of 60 KB a second (some of them let through all along, as the rate refills) is
//! cut off with `flooding` and close code 1008 within seconds, and the cut is audited; a
//! client that keeps to the limits is never cut off.

mod common;

use std::time::{Duration, Instant};

use common::signaling::{Harness, fixture_now};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(h: &Harness, who: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(&h.ws_url).await.unwrap();
    let join =
        json!({"type": "join", "v": 1, "appointment": "tele-interp-1", "token": h.token(who)});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let first = next(&mut ws).await.expect("an answer to the join");
    assert_eq!(first["type"], "lobby", "{first}");
    ws
}

async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_flood_is_cut_off_and_a_polite_client_is_not() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));

    // Polite: 15 pings a second for three seconds, each answered.
    let mut polite = join(&h, "RelatedPerson/rp-3").await;
    for _ in 0..45 {
        polite
            .send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
        let answer = next(&mut polite).await.expect("an answer");
        assert_eq!(answer["type"], "pong", "{answer}");
        tokio::time::sleep(Duration::from_millis(66)).await;
    }

    // The flood: a valid ping padded to 60 KB, 100 a second, for at most 20 seconds.
    let ws = join(&h, "Patient/pat-1042").await;
    let (mut tx, mut rx) = ws.split();
    let padded = format!("{{\"type\":\"ping\"{}}}", " ".repeat(60_000));
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while started.elapsed() < Duration::from_secs(20) {
            tick.tick().await;
            if tx.send(Message::Text(padded.clone().into())).await.is_err() {
                return;
            }
        }
    });
    let (mut codes, mut pongs) = (Vec::new(), 0);
    let close: Option<CloseFrame> = loop {
        match tokio::time::timeout(Duration::from_secs(25), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    _ => codes.extend(v["code"].as_str().map(str::to_owned)),
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => break None,
            Err(_) => panic!("still open after 25 s of flooding: {codes:?}, {pongs} pongs"),
        }
    };
    let took = started.elapsed();
    sender.abort();
    println!("flood cut off after {took:?}; {pongs} of its pings answered; errors {codes:?}");
    let close = close.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "flooding")
    );
    assert_eq!(codes.first().map(String::as_str), Some("rate_limited"));
    assert_eq!(codes.last().map(String::as_str), Some("flooding"));
    assert!(
        took < Duration::from_secs(10),
        "cut off only after {took:?}"
    );

    // The polite client saw none of it, and the cut is audited against the flooder.
    polite
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next(&mut polite).await.unwrap()["type"], "pong");
    let audit = h.audit();
    assert!(
        audit.iter().any(|r| r["reason"] == "flooding"
            && r["fhir_user"] == "Patient/pat-1042"
            && r["outcome"] == "deny"),
        "{audit:#?}"
    );
}
