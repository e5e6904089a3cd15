//! The session loop driven over channels (no socket for the client): what a client is told
//! when a failure on our side stops its join.

use std::sync::Arc;

use axum::extract::ws::Message;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::{FirstFrame, FrameSink, FrameStream, run};
use crate::access::ClientInfo;
use crate::booking::{BookingError, BookingSystem};
use crate::config::SignalingConfig;
use crate::dev::DevIssuer;
use crate::fhir::{Appointment, PractitionerRole};

/// Where the booking system lives inside the hospital: never for a patient's eyes.
const INTERNAL: &str = "https://fhir.internal.hospital.example:8443/r4";

/// A booking system that is down, its error naming its address as an HTTP client's does.
struct DownBooking;

impl DownBooking {
    fn error() -> BookingError {
        BookingError::Unavailable(format!(
            "error sending request for url ({INTERNAL}/Appointment/appt-1): connection refused"
        ))
    }
}

impl BookingSystem for DownBooking {
    fn appointment<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Appointment, BookingError>> {
        Box::pin(async { Err(DownBooking::error()) })
    }

    fn practitioner_role<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<PractitionerRole, BookingError>> {
        Box::pin(async { Err(DownBooking::error()) })
    }
}

/// Serve the dev issuer's keys on loopback, for the verifier to fetch.
async fn serve_jwks() -> (Arc<DevIssuer>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer =
        Arc::new(DevIssuer::new(&format!("http://{}", listener.local_addr().unwrap())).unwrap());
    let jwks = issuer.jwks();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (issuer, server)
}

/// Run one session from `first` to its end; what it sent the client.
async fn session(deps: crate::state::AppState, first: String) -> Vec<Value> {
    let (to_client, mut sent) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let sink: FrameSink = Box::pin(futures_util::sink::unfold(
        to_client,
        |tx, m: Message| async move {
            let _ = tx.send(m);
            Ok::<_, axum::Error>(tx)
        },
    ));
    // The client says nothing more and has gone once it is answered.
    let stream: FrameStream = Box::pin(futures_util::stream::empty());
    let first = FirstFrame::Frame(Some(Ok(Message::Text(first.into()))));
    let ran = run(deps, first, stream, sink, ClientInfo::default(), None, None);
    tokio::time::timeout(std::time::Duration::from_secs(10), ran)
        .await
        .expect("the session ends by itself");
    let mut out = Vec::new();
    while let Ok(m) = sent.try_recv() {
        if let Message::Text(t) = m {
            out.push(serde_json::from_str(&t).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn a_booking_outage_is_refused_with_its_code_and_no_internal_address() {
    let (issuer, server) = serve_jwks().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SignalingConfig::default();
    cfg.audit.path = dir.path().join("audit.jsonl");
    cfg.audit.key_file = dir.path().join("audit.key");
    crate::audit::AuditKey::create(&cfg.audit.key_file).unwrap();
    let overrides = crate::Overrides {
        booking: Some(Arc::new(DownBooking)),
        dev_issuer: Some(issuer.clone()),
    };
    let deps = crate::build(cfg, overrides).unwrap();
    let token = issuer.token("Patient/pat-1", deps.clock.now(), 10).unwrap();
    let join = json!({"type": "join", "v": 1, "appointment": "appt-1", "token": token});

    let said = session(deps.clone(), join.to_string()).await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0]["type"], "error");
    assert_eq!(said[0]["code"], "booking_unavailable");
    let text = said[0].to_string();
    for leak in ["fhir.internal", "http", "8443", "connection refused"] {
        assert!(!text.contains(leak), "{leak} reached the client: {text}");
    }
    // The decision is audited under the caller's name (the token was verified first).
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("booking_unavailable"), "{audit}");
    assert!(audit.contains("Patient/pat-1"), "{audit}");
    assert!(!audit.contains("fhir.internal"), "{audit}");
    server.abort();
}
