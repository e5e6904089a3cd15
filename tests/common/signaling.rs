//! Signaling as deployed, on loopback: the service in-process (so a test can move its
//! clock), a real SFU process, and doubles of what is outside the product that speak the
//! real protocols: an identity provider (JWKS over HTTP, ES256 tokens with `fhirUser`) and
//! the hospital's FHIR server (SMART Backend Services token endpoint that checks our client
//! assertion, Appointment and PractitionerRole reads).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use metaclinic_loadtest::local::LocalSfu;
use metaclinic_signaling::config::{BookingBackend, SfuNode, SignalingConfig};
use metaclinic_signaling::state::AppState;
use p256::elliptic_curve::rand_core::OsRng;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde_json::{Value, json};

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// The hospital's identity provider: ES256 tokens, JWKS over HTTP.
pub struct Idp {
    key: EncodingKey,
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
}

impl Idp {
    pub async fn start() -> Idp {
        let signing = p256::ecdsa::SigningKey::random(&mut OsRng);
        let key =
            EncodingKey::from_ec_pem(signing.to_pkcs8_pem(Default::default()).unwrap().as_bytes())
                .unwrap();
        let public = p256::PublicKey::from(signing.verifying_key());
        let mut jwk: Value = serde_json::from_str(&public.to_jwk_string()).unwrap();
        jwk["kid"] = "idp-1".into();
        jwk["alg"] = "ES256".into();
        jwk["use"] = "sig".into();
        let jwks = json!({ "keys": [jwk] });
        let addr =
            serve(Router::new().route("/jwks", get(move || async move { Json(jwks) }))).await;
        Idp {
            key,
            issuer: format!("http://{addr}/idp"),
            jwks_url: format!("http://{addr}/jwks"),
            audience: "metaclinic".into(),
        }
    }

    /// A token for `fhir_user` (an absolute or relative reference), valid for an hour.
    pub fn token(&self, fhir_user: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("idp-1".into());
        let claims = json!({
            "iss": self.issuer, "aud": self.audience, "sub": fhir_user, "iat": now, "exp": now + 3600,
            "jti": uuid::Uuid::new_v4().to_string(), "fhirUser": fhir_user,
        });
        // As providers that normalize their signatures do: the verifier takes low-s only.
        let token = jsonwebtoken::encode(&header, &claims, &self.key).unwrap();
        metaclinic_signaling::identity::with_low_s(&token)
    }
}

/// The hospital's FHIR server.
pub struct FhirDouble {
    pub base: String,
    pub token_url: String,
    state: Arc<FhirState>,
}

struct FhirState {
    resources: Mutex<HashMap<String, Value>>,
    /// The client's registered public key (SMART: the JWKS the hospital holds for us).
    client_key: DecodingKey,
    client_id: String,
    key_id: String,
    token_url: Mutex<String>,
    issued: Mutex<HashSet<String>>,
    seen_jti: Mutex<HashSet<String>>,
    down: AtomicBool,
    token_requests: AtomicU64,
    refused_assertions: AtomicU64,
    reads: AtomicU64,
    /// Resources created through batch Bundles (the write-back), in order.
    written: Mutex<Vec<Value>>,
    /// Answer this many more batch POSTs with 503.
    failing_writes: AtomicU64,
    /// Batch POSTs refused for a missing or unknown access token.
    unauthorized_writes: AtomicU64,
}

#[derive(serde::Deserialize)]
struct TokenForm {
    grant_type: String,
    scope: Option<String>,
    client_assertion_type: String,
    client_assertion: String,
}

fn oauth_error(code: &str) -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": code }))).into_response()
}

async fn token(State(s): State<Arc<FhirState>>, Form(form): Form<TokenForm>) -> Response {
    if s.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.token_requests.fetch_add(1, Ordering::Relaxed);
    let refuse = |code| {
        s.refused_assertions.fetch_add(1, Ordering::Relaxed);
        oauth_error(code)
    };
    if form.grant_type != "client_credentials"
        || form.client_assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return refuse("invalid_request");
    }
    // SMART Backend Services: ES384/RS384, iss = sub = client_id, aud = token URL,
    // exp at most five minutes ahead, a jti never seen before, the registered kid.
    let Ok(header) = jsonwebtoken::decode_header(&form.client_assertion) else {
        return refuse("invalid_client");
    };
    if header.alg != Algorithm::ES384 || header.kid.as_deref() != Some(s.key_id.as_str()) {
        return refuse("invalid_client");
    }
    let mut v = Validation::new(Algorithm::ES384);
    v.set_audience(&[s.token_url.lock().unwrap().clone()]);
    v.set_issuer(std::slice::from_ref(&s.client_id));
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let Ok(data) = jsonwebtoken::decode::<Value>(&form.client_assertion, &s.client_key, &v) else {
        return refuse("invalid_client");
    };
    let c = data.claims;
    let now = chrono::Utc::now().timestamp();
    let jti = c["jti"].as_str().unwrap_or_default().to_owned();
    if c["sub"] != json!(s.client_id)
        || c["exp"].as_i64().is_none_or(|e| e > now + 300)
        || jti.is_empty()
    {
        return refuse("invalid_client");
    }
    if !s.seen_jti.lock().unwrap().insert(jti) {
        return refuse("invalid_client"); // replayed assertion
    }
    let access = uuid::Uuid::new_v4().to_string();
    s.issued.lock().unwrap().insert(access.clone());
    Json(json!({ "access_token": access, "token_type": "bearer", "expires_in": 300, "scope": form.scope })).into_response()
}

async fn read(
    State(s): State<Arc<FhirState>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if s.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| s.issued.lock().unwrap().contains(t)) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.reads.fetch_add(1, Ordering::Relaxed);
    match s.resources.lock().unwrap().get(&format!("{kind}/{id}")) {
        Some(r) => ([("content-type", "application/fhir+json")], Json(r.clone())).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "resourceType": "OperationOutcome" })),
        )
            .into_response(),
    }
}

/// A batch Bundle POSTed to the base: each entry created (Encounters once per identifier,
/// as `ifNoneExist` asks), answered with a batch-response.
async fn batch(
    State(s): State<Arc<FhirState>>,
    headers: HeaderMap,
    Json(bundle): Json<Value>,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| s.issued.lock().unwrap().contains(t)) {
        s.unauthorized_writes.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let failing = s.failing_writes.load(Ordering::Relaxed);
    if failing > 0 {
        s.failing_writes.store(failing - 1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "batch" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "resourceType": "OperationOutcome" })),
        )
            .into_response();
    }
    let mut responses = Vec::new();
    let mut written = s.written.lock().unwrap();
    for entry in bundle["entry"].as_array().cloned().unwrap_or_default() {
        let resource = entry["resource"].clone();
        let kind = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if entry["request"]["method"] != "POST" || entry["request"]["url"] != kind.as_str() {
            responses.push(json!({ "response": { "status": "400 Bad Request" } }));
            continue;
        }
        // ifNoneExist=identifier=system|value (the bar may be escaped).
        let existing = entry["request"]["ifNoneExist"].as_str().and_then(|q| {
            let wanted = q.strip_prefix("identifier=")?.replace("%7C", "|");
            written.iter().position(|w| {
                w["resourceType"] == kind.as_str()
                    && w["identifier"].as_array().is_some_and(|ids| {
                        ids.iter().any(|i| {
                            format!(
                                "{}|{}",
                                i["system"].as_str().unwrap_or(""),
                                i["value"].as_str().unwrap_or("")
                            ) == wanted
                        })
                    })
            })
        });
        let (status, index) = match existing {
            Some(i) => ("200 OK", i),
            None => {
                let mut stored = resource;
                stored["id"] = format!("srv-{}", written.len() + 1).into();
                written.push(stored);
                ("201 Created", written.len() - 1)
            }
        };
        let id = written[index]["id"].as_str().unwrap().to_owned();
        responses.push(json!({ "response": { "status": status, "location": format!("{kind}/{id}/_history/1") } }));
    }
    (
        [("content-type", "application/fhir+json")],
        Json(json!({ "resourceType": "Bundle", "type": "batch-response", "entry": responses })),
    )
        .into_response()
}

pub struct ClientKey {
    pub pem_path: std::path::PathBuf,
    pub public_pem: String,
}

impl FhirDouble {
    /// Start the server; our client's ES384 key is written to `dir`.
    pub async fn start(dir: &std::path::Path) -> (FhirDouble, ClientKey) {
        let secret = p384::SecretKey::random(&mut OsRng);
        let pem_path = dir.join("smart-client.pem");
        std::fs::write(
            &pem_path,
            secret.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
        )
        .unwrap();
        let public_pem = secret
            .public_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let state = Arc::new(FhirState {
            resources: Mutex::default(),
            client_key: DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
            client_id: "metaclinic-signaling".into(),
            key_id: "smart-1".into(),
            token_url: Mutex::default(),
            issued: Mutex::default(),
            seen_jti: Mutex::default(),
            down: AtomicBool::new(false),
            token_requests: AtomicU64::new(0),
            refused_assertions: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            written: Mutex::default(),
            failing_writes: AtomicU64::new(0),
            unauthorized_writes: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/fhir/token", post(token))
            .route("/fhir", post(batch))
            .route("/fhir/{kind}/{id}", get(read))
            .with_state(state.clone());
        let addr = serve(router).await;
        let base = format!("http://{addr}/fhir");
        let token_url = format!("{base}/token");
        *state.token_url.lock().unwrap() = token_url.clone();
        (
            FhirDouble {
                base,
                token_url,
                state,
            },
            ClientKey {
                pem_path,
                public_pem,
            },
        )
    }

    pub fn put(&self, resource: Value) {
        let key = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        self.state.resources.lock().unwrap().insert(key, resource);
    }

    pub fn set_status(&self, appointment: &str, status: &str) {
        if let Some(r) = self
            .state
            .resources
            .lock()
            .unwrap()
            .get_mut(&format!("Appointment/{appointment}"))
        {
            r["status"] = status.into();
        }
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
    }

    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    pub fn refused_assertions(&self) -> u64 {
        self.state.refused_assertions.load(Ordering::Relaxed)
    }

    pub fn reads(&self) -> u64 {
        self.state.reads.load(Ordering::Relaxed)
    }

    /// The resources of `kind` created through batch Bundles.
    pub fn written(&self, kind: &str) -> Vec<Value> {
        let written = self.state.written.lock().unwrap();
        written
            .iter()
            .filter(|w| w["resourceType"] == kind)
            .cloned()
            .collect()
    }

    /// Answer the next `n` batch POSTs with 503.
    pub fn fail_writes(&self, n: u64) {
        self.state.failing_writes.store(n, Ordering::Relaxed);
    }

    pub fn unauthorized_writes(&self) -> u64 {
        self.state.unauthorized_writes.load(Ordering::Relaxed)
    }
}

/// A telehealth appointment from the fixtures, rescheduled to run from five minutes ago
/// for `minutes`.
pub fn fixture_now(name: &str, minutes: i64) -> Value {
    let path = format!(
        "{}/tests/fixtures/fhir/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    v["start"] = start
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .into();
    v["end"] = (start + chrono::Duration::minutes(minutes))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .into();
    v
}

pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/fhir/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Signaling in front of a real SFU, with its identity provider and booking system.
pub struct Harness {
    pub sfu: LocalSfu,
    pub idp: Idp,
    pub fhir: FhirDouble,
    pub state: AppState,
    pub base: String,
    pub ws_url: String,
    pub audit_path: std::path::PathBuf,
    /// The audit log's MAC key and its checkpoint.
    pub audit_key: std::path::PathBuf,
    pub audit_checkpoint: std::path::PathBuf,
    pub client_key: ClientKey,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut SignalingConfig)) -> Harness {
        Self::start_with_sfu(&[], adjust).await
    }

    /// With this environment for the SFU process (its configuration overrides).
    pub async fn start_with_sfu(
        sfu_env: &[(&str, &str)],
        adjust: impl FnOnce(&mut SignalingConfig),
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sfu = super::start_sfu_with(1, sfu_env);
        let idp = Idp::start().await;
        let (fhir, client_key) = FhirDouble::start(dir.path()).await;
        let mut cfg = SignalingConfig::default();
        cfg.identity.issuer = idp.issuer.clone();
        cfg.identity.audience = idp.audience.clone();
        cfg.identity.jwks_url = Some(idp.jwks_url.clone());
        cfg.identity.fhir_base = fhir.base.clone();
        cfg.identity.algorithms = vec!["ES256".into()];
        cfg.booking.backend = BookingBackend::Fhir;
        cfg.booking.fhir.base_url = fhir.base.clone();
        cfg.booking.fhir.token_url = fhir.token_url.clone();
        cfg.booking.fhir.client_id = "metaclinic-signaling".into();
        cfg.booking.fhir.private_key_file = client_key.pem_path.clone();
        cfg.booking.fhir.key_id = "smart-1".into();
        cfg.booking.fhir.algorithm = "ES384".into();
        cfg.booking.fhir.timeout_ms = 1000;
        cfg.booking.fhir.retries = 1;
        cfg.audit.path = dir.path().join("audit.jsonl");
        cfg.audit.key_file = dir.path().join("audit.key");
        std::fs::write(
            &cfg.audit.key_file,
            "a test audit key of at least thirty-two bytes\n",
        )
        .unwrap();
        cfg.policy.recheck_interval_s = 1;
        cfg.sfu.nodes = vec![SfuNode {
            id: "sfu-test".into(),
            url: format!("http://{}", sfu.control_addr),
            credential: metaclinic_loadtest::local::LOCAL_CREDENTIAL.into(),
        }];
        adjust(&mut cfg);
        cfg.validate().unwrap();
        let audit_path = cfg.audit.path.clone();
        let audit_key = cfg.audit.key_file.clone();
        let audit_checkpoint = cfg.audit.checkpoint_path();
        let state = metaclinic_signaling::build(cfg, Default::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(metaclinic_signaling::serve(
            listener,
            state.clone(),
            None,
            std::future::pending(),
        ));
        Harness {
            sfu,
            idp,
            fhir,
            state,
            base: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/v1/ws"),
            audit_path,
            audit_key,
            audit_checkpoint,
            client_key,
            _dir: dir,
        }
    }

    /// A token whose `fhirUser` is `reference` under the FHIR base (as SMART issuers write it).
    pub fn token(&self, reference: &str) -> String {
        self.idp.token(&format!("{}/{reference}", self.fhir.base))
    }

    /// Verify the audit log with its key and checkpoint.
    pub fn verify_audit(
        &self,
    ) -> Result<metaclinic_signaling::audit::VerifyReport, metaclinic_signaling::audit::VerifyError>
    {
        let key = metaclinic_signaling::audit::AuditKey::from_file(&self.audit_key).unwrap();
        let options = metaclinic_signaling::audit::VerifyOptions {
            key: Some(&key),
            checkpoint: Some(&self.audit_checkpoint),
        };
        metaclinic_signaling::audit::verify(&self.audit_path, &options)
    }

    /// The audit log's records.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
