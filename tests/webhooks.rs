//! Webhooks as a hospital's receiver sees them: a real `metaclinic signaling` process in
//! front of a real SFU, real WebRTC participants holding a consultation, and a receiver (an
//! HTTP server on loopback) that checks both signatures of every delivery as a receiver
//! would. The receiver refuses the first attempts with 500s, is down while signaling is
//! killed (SIGKILL) with events still in its outbox, and signaling is started again on the
//! same outbox: every event of the consultation arrives, each exactly once by event id,
//! each with a valid signature.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::cluster::eventually;
use common::signaling::{Idp, fixture_now};
use hmac::{Hmac, Mac};
use metaclinic_loadtest::local::free_tcp_addr;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant};
use metaclinic_signaling::protocol::ClientMessage;
use serde_json::Value;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(20);
const APPOINTMENT: &str = "tele-interp-1";
const DOCTOR: &str = "Practitioner/prac-77";
const PATIENT: &str = "Patient/pat-1042";
const INTERPRETER: &str = "Practitioner/interp-9";
const SECRET: &str = "the receiver's webhook secret, 32+ characters";

/// The hospital's receiver: verifies, then answers as told.
#[derive(Default)]
struct Receiver {
    /// Refuse this many more (valid) deliveries with 500.
    failing: AtomicU64,
    /// Refuse every delivery with 500.
    down: AtomicBool,
    attempts: AtomicU64,
    bad_signatures: AtomicU64,
    /// Accepted events by id, with how many times each was accepted.
    accepted: Mutex<BTreeMap<String, (Value, u32)>>,
}

impl Receiver {
    fn events(&self) -> Vec<Value> {
        self.accepted
            .lock()
            .unwrap()
            .values()
            .map(|(v, _)| v.clone())
            .collect()
    }

    fn count(&self, kind: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == kind).count()
    }
}

/// Both signatures, checked as a receiver does: the JWT (HS256 with the secret, its
/// `sha256` claim the body's hash) and the Standard Webhooks HMAC over id, timestamp, body.
fn signed(headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("no {n}"))
    };
    let jwt = header("authorization")?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<Value>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &v,
    )
    .map_err(|e| format!("jwt: {e}"))?
    .claims;
    if claims["sha256"] != STANDARD.encode(Sha256::digest(body)) {
        return Err("the JWT's sha256 is not the body's".into());
    }
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let age =
        chrono::Utc::now().timestamp() - timestamp.parse::<i64>().map_err(|e| e.to_string())?;
    if age.abs() > 300 {
        return Err("stale timestamp".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let signatures = header("webhook-signature")?;
    if !signatures.split(' ').any(|s| s == expected) {
        return Err("webhook-signature does not match".into());
    }
    Ok(id)
}

async fn deliver(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.attempts.fetch_add(1, Ordering::Relaxed);
    let id = match signed(&headers, &body) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("receiver: bad signature: {e}");
            r.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
    };
    if r.down.load(Ordering::Relaxed) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let failing = r.failing.load(Ordering::Relaxed);
    if failing > 0 {
        r.failing.store(failing - 1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    assert_eq!(event["id"], id.as_str(), "webhook-id is the event's id");
    r.accepted.lock().unwrap().entry(id).or_insert((event, 0)).1 += 1;
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (SocketAddr, Arc<Receiver>) {
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hooks", post(deliver))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, receiver)
}

/// `metaclinic signaling` with its config file; killed on drop.
struct Signaling {
    child: Child,
    ws_url: String,
    base: String,
}

impl Drop for Signaling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Signaling {
    async fn start(config: &Path, addr: SocketAddr, log: &Path) -> Signaling {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_metaclinic"))
            .arg("signaling")
            .arg("--config")
            .arg(config)
            .env("METACLINIC_LOG", "info,rtc=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut s = Signaling {
            child,
            ws_url: format!("ws://{addr}/v1/ws"),
            base: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", s.base)).await
                && r.status() == 200
            {
                return s;
            }
            assert!(s.child.try_wait().unwrap().is_none(), "signaling exited");
            assert!(Instant::now() < deadline, "signaling did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no drain, no goodbye, the outbox as it is on disk.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        common::metric(&text, name, labels)
    }
}

fn config(dir: &Path, addr: SocketAddr, idp: &Idp, sfu: &str, hooks: SocketAddr) -> PathBuf {
    let text = format!(
        r#"
[http]
listen = "{addr}"
public_url = "http://{addr}"

[identity]
issuer = "{issuer}"
audience = "{audience}"
jwks_url = "{jwks}"
algorithms = ["ES256"]
fhir_base = "http://fhir.test/R4"

[booking]
backend = "files"

[booking.files]
dir = "{appointments}"

[sfu]
nodes = [{{ id = "sfu-1", url = "http://{sfu}", credential = "{credential}" }}]

[audit]
path = "{audit}"
key_file = "{key}"

[webhooks]
endpoints = [{{ name = "records", url = "http://{hooks}/hooks", secret = "{SECRET}" }}]
outbox_path = "{outbox}"
retry_initial_ms = 100
retry_max_ms = 400
timeout_ms = 2000
"#,
        issuer = idp.issuer,
        audience = idp.audience,
        jwks = idp.jwks_url,
        appointments = dir.join("appointments").display(),
        credential = metaclinic_loadtest::local::LOCAL_CREDENTIAL,
        audit = dir.join("audit.jsonl").display(),
        key = dir.join("audit.key").display(),
        outbox = dir.join("webhooks").join("outbox.jsonl").display(),
    );
    let path = dir.join("signaling.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn join(driver: &ClientDriver, s: &Signaling, idp: &Idp, who: &str) -> SignalingParticipant {
    SignalingParticipant::join(
        driver,
        &s.ws_url,
        APPOINTMENT,
        &idp.token(who),
        None,
        ParticipantSpec::new(who).with_tone(440),
    )
    .await
    .unwrap()
}

async fn in_call(p: &mut SignalingParticipant) -> bool {
    matches!(
        p.wait_phase(T, |ph| matches!(ph, Phase::InCall(_))).await,
        Phase::InCall(_)
    )
}

async fn in_lobby(p: &mut SignalingParticipant) -> bool {
    matches!(
        p.wait_phase(T, |ph| *ph == Phase::Lobby).await,
        Phase::Lobby
    )
}

/// How many audit records of `action` (by `who`, or targeting `who`) the log holds.
fn audited(dir: &Path, action: &str, who: &str) -> usize {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["action"] == action && r["outcome"] == "ok")
        .filter(|r| r["fhir_user"] == who || r["target"] == who)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_signed_through_failures_and_a_killed_signaling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("appointments")).unwrap();
    std::fs::write(
        d.join("appointments").join(format!("{APPOINTMENT}.json")),
        fixture_now("appointment-telehealth-interpreter", 60).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("audit.key"),
        "a test audit key of at least thirty-two bytes\n",
    )
    .unwrap();
    let sfu = common::start_sfu(1);
    let idp = Idp::start().await;
    let (hooks, receiver) = start_receiver().await;
    let addr = free_tcp_addr().unwrap();
    let cfg = config(d, addr, &idp, &sfu.control_addr.to_string(), hooks);
    let log = d.join("signaling.log");
    let driver = ClientDriver::start("webhooks").unwrap();

    // The receiver fails its first attempts.
    receiver.failing.store(3, Ordering::Relaxed);
    let first = Signaling::start(&cfg, addr, &log).await;
    let doctor = join(&driver, &first, &idp, DOCTOR).await;
    assert!(matches!(doctor.phase(), Phase::InCall(_)));
    let mut patient = join(&driver, &first, &idp, PATIENT).await;
    assert!(in_lobby(&mut patient).await);
    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    assert!(in_call(&mut patient).await);
    // started, doctor joined, patient joined (lobby), patient admitted.
    assert!(
        eventually(T, || async { receiver.events().len() >= 4 }).await,
        "{:#?}",
        receiver.events()
    );
    assert!(
        first
            .metric(
                "metaclinic_signaling_webhooks_retried_total",
                "reason=\"http_5xx\""
            )
            .await
            >= 3.0
    );

    // The receiver goes down; the interpreter comes in; signaling dies with those events
    // in its outbox.
    receiver.down.store(true, Ordering::Relaxed);
    let mut interpreter = join(&driver, &first, &idp, INTERPRETER).await;
    assert!(in_lobby(&mut interpreter).await);
    doctor.send(ClientMessage::Admit {
        participant: INTERPRETER.into(),
    });
    assert!(in_call(&mut interpreter).await);
    assert!(eventually(T, || async { audited(d, "admit", INTERPRETER) == 1 }).await);
    let outbox = d.join("webhooks").join("outbox.jsonl");
    assert!(
        eventually(T, || async {
            std::fs::read_to_string(&outbox).is_ok_and(|t| t.contains("interpreter.joined"))
        })
        .await,
        "the interpreter's events never reached the outbox"
    );
    let accepted_before = receiver.events().len();
    first.kill();
    drop((doctor, patient, interpreter));

    // Signaling again, on the same outbox and audit log; the receiver is back.
    receiver.down.store(false, Ordering::Relaxed);
    let second = Signaling::start(&cfg, addr, &log).await;
    assert!(
        eventually(T, || async { receiver.count("interpreter.joined") == 1 }).await,
        "the events in the outbox were not delivered after the restart"
    );
    assert!(receiver.events().len() > accepted_before);
    // The consultation goes on: the doctor and the patient come back, the doctor extends
    // it, removes the patient, and ends it.
    let mut doctor = join(&driver, &second, &idp, DOCTOR).await;
    assert!(in_call(&mut doctor).await);
    let mut patient = join(&driver, &second, &idp, PATIENT).await;
    assert!(in_lobby(&mut patient).await);
    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    assert!(in_call(&mut patient).await);
    doctor.send(ClientMessage::Extend { minutes: 10 });
    assert!(eventually(T, || async { audited(d, "extend", DOCTOR) == 1 }).await);
    doctor.send(ClientMessage::Remove {
        participant: PATIENT.into(),
    });
    assert!(eventually(T, || async { audited(d, "remove", PATIENT) == 1 }).await);
    doctor.send(ClientMessage::End);
    assert!(
        eventually(T, || async { receiver.count("consultation.ended") == 1 }).await,
        "{:#?}",
        receiver.events()
    );
    // Leaves written before the end come through too (leaves after it make no events).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Every event once by id, signed.
    assert_eq!(receiver.bad_signatures.load(Ordering::Relaxed), 0);
    let events = receiver.events();
    let kinds = |kind: &str, who: Option<&str>| {
        events
            .iter()
            .filter(|e| e["event"] == kind)
            .filter(|e| who.is_none_or(|w| e["participant"]["reference"] == w))
            .count()
    };
    assert_eq!(kinds("consultation.started", None), 1, "{events:#?}");
    assert_eq!(kinds("consultation.ended", None), 1);
    // The doctor and the patient joined twice (before and after the restart), the
    // interpreter once.
    assert_eq!(kinds("participant.joined", Some(DOCTOR)), 2);
    assert_eq!(kinds("participant.joined", Some(PATIENT)), 2);
    assert_eq!(kinds("participant.joined", Some(INTERPRETER)), 1);
    assert_eq!(kinds("participant.admitted", Some(PATIENT)), 2);
    assert_eq!(kinds("participant.admitted", Some(INTERPRETER)), 1);
    assert_eq!(kinds("interpreter.joined", Some(INTERPRETER)), 1);
    assert_eq!(kinds("appointment.extended", None), 1);
    assert_eq!(kinds("participant.removed", Some(PATIENT)), 1);
    // Every event the audit log implies, and no other: each admit, lobby, enter_call,
    // extend, remove and end record made its events.
    let implied = audited(d, "lobby", PATIENT)
        + audited(d, "lobby", INTERPRETER)
        + audited(d, "enter_call", DOCTOR)
        + audited(d, "admit", PATIENT)
        + 2 * audited(d, "admit", INTERPRETER)
        + audited(d, "extend", DOCTOR)
        + audited(d, "remove", PATIENT)
        + 2; // start (once: the second start continued it) and end
    let left = kinds("participant.left", None);
    assert_eq!(events.len() - left, implied, "{events:#?}");
    // Exactly once by id: the receiver took each id once, though some were sent again.
    {
        let accepted = receiver.accepted.lock().unwrap();
        let twice: Vec<_> = accepted.iter().filter(|(_, (_, n))| *n > 1).collect();
        println!(
            "webhooks: {} events, {} attempts, {} accepted more than once (at least once)",
            accepted.len(),
            receiver.attempts.load(Ordering::Relaxed),
            twice.len()
        );
    }

    // References only: the same consultation everywhere, roles and no names.
    let consultations: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e["consultation"].to_string())
        .collect();
    assert_eq!(consultations.len(), 1, "{consultations:?}");
    let admitted = events
        .iter()
        .find(|e| {
            e["event"] == "participant.admitted" && e["participant"]["reference"] == INTERPRETER
        })
        .unwrap();
    assert_eq!(admitted["participant"]["role"], "interpreter");
    assert_eq!(admitted["by"]["reference"], DOCTOR);
    let extended = events
        .iter()
        .find(|e| e["event"] == "appointment.extended")
        .unwrap();
    assert!(extended["ends_at"].is_string(), "{extended}");
    let text = serde_json::to_string(&events).unwrap();
    for display in ["Attending surgeon", "Medical interpreter", "Family member"] {
        assert!(!text.contains(display));
    }
    assert!(
        second
            .metric(
                "metaclinic_signaling_webhooks_delivered_total",
                "endpoint=\"records\""
            )
            .await
            >= 1.0
    );
}
