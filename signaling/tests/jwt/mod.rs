//! Shared by the JWT tests: real keys (RSA 2048, P-256), an identity provider serving its
//! JWKS and OIDC discovery over real HTTP on 127.0.0.1 (an axum server each test starts),
//! and token builders. `now` is the wall clock, as in production.

#![allow(dead_code)]

use metaclinic_signaling::identity;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use identity::{IdentityConfig, SigningAlg, Verifier};

pub const ISSUER: &str = "https://idp.hospital.example";
pub const AUDIENCE: &str = "metaclinic-signaling";
pub const FHIR_BASE: &str = "https://fhir.hospital.example/R4";
pub const LEEWAY: i64 = 30;
pub const INTERVAL: i64 = 30;
pub const DEV_SECRET: &str = "development-only-secret-of-32-bytes!";

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---- keys ----

pub struct RsaKey {
    pub kid: &'static str,
    pub private: rsa::RsaPrivateKey,
}

impl RsaKey {
    pub fn generate(kid: &'static str) -> RsaKey {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        RsaKey { kid, private }
    }

    pub fn signer(&self) -> EncodingKey {
        EncodingKey::from_rsa_der(self.private.to_pkcs1_der().unwrap().as_bytes())
    }

    /// The public key as a JWK under another kid (what a provider publishes).
    pub fn jwk_as(&self, kid: &str) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be()),
        })
    }

    pub fn jwk(&self) -> Value {
        self.jwk_as(self.kid)
    }
}

/// RSA key generation is slow, so once per test binary: the provider's key and an attacker's.
pub fn rsa_keys() -> &'static (RsaKey, RsaKey) {
    static KEYS: OnceLock<(RsaKey, RsaKey)> = OnceLock::new();
    KEYS.get_or_init(|| (RsaKey::generate("rsa-1"), RsaKey::generate("attacker")))
}

pub struct EcKey {
    pub kid: &'static str,
    pub private: p256::SecretKey,
}

impl EcKey {
    pub fn generate(kid: &'static str) -> EcKey {
        EcKey {
            kid,
            private: p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
        }
    }

    pub fn signer(&self) -> EncodingKey {
        EncodingKey::from_ec_der(self.private.to_pkcs8_der().unwrap().as_bytes())
    }

    pub fn jwk(&self) -> Value {
        let point = self.private.public_key().to_encoded_point(false);
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "kid": self.kid,
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        })
    }
}

// ---- tokens ----

pub fn claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-77",
        "jti": "jti-1",
        "iat": now,
        "exp": now + 300,
        "fhirUser": format!("{FHIR_BASE}/Practitioner/prac-77"),
    })
}

pub fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

pub fn without(mut claims: Value, field: &str) -> Value {
    claims.as_object_mut().unwrap().remove(field);
    claims
}

/// Sign any header and claims: attacks need headers no well-behaved library would write.
pub fn sign(header: Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{signature}")
}

pub fn rs256(key: &RsaKey, kid: &str, claims: &Value) -> String {
    sign(
        json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        claims,
        &key.signer(),
        Algorithm::RS256,
    )
}

/// An ES256 token as a well-behaved provider signs it: in low-s form (tests/ecdsa_high_s.rs
/// tries the other one).
pub fn es256(key: &EcKey, kid: &str, claims: &Value) -> String {
    identity::with_low_s(&sign(
        json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
        claims,
        &key.signer(),
        Algorithm::ES256,
    ))
}

/// Replace the payload of a signed token, keeping its header and signature.
pub fn swap_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
}

// ---- the identity provider ----

#[derive(Clone)]
pub struct IdpState {
    pub base: String,
    pub jwks: Arc<Mutex<Value>>,
    pub jwks_hits: Arc<AtomicUsize>,
    /// Slows the JWKS answer so that concurrent verifications overlap the fetch.
    pub delay: Duration,
}

pub struct Idp {
    pub state: IdpState,
}

impl Idp {
    pub async fn start(keys: Vec<Value>) -> Idp {
        Self::start_with_delay(keys, Duration::ZERO).await
    }

    pub async fn start_with_delay(keys: Vec<Value>, delay: Duration) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = IdpState {
            base: format!("http://{}", listener.local_addr().unwrap()),
            jwks: Arc::new(Mutex::new(json!({ "keys": keys }))),
            jwks_hits: Arc::default(),
            delay,
        };
        let app = Router::new()
            .route("/jwks", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .route(
                "/other/.well-known/openid-configuration",
                get(other_discovery),
            )
            .route("/broken", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .route("/html", get(|| async { "<html>maintenance</html>" }))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Idp { state }
    }

    pub fn publish(&self, keys: Vec<Value>) {
        *self.state.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.state.base)
    }

    pub fn config(&self) -> IdentityConfig {
        config(Some(self.url("/jwks")))
    }
}

pub async fn jwks(State(idp): State<IdpState>) -> Json<Value> {
    idp.jwks_hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(idp.delay).await;
    let jwks = idp.jwks.lock().unwrap().clone();
    Json(jwks)
}

pub async fn discovery(State(idp): State<IdpState>) -> Json<Value> {
    Json(json!({ "issuer": ISSUER, "jwks_uri": format!("{}/jwks", idp.base) }))
}

pub async fn other_discovery(State(idp): State<IdpState>) -> Json<Value> {
    Json(json!({ "issuer": "https://evil.example", "jwks_uri": format!("{}/jwks", idp.base) }))
}

pub fn config(jwks_url: Option<String>) -> IdentityConfig {
    IdentityConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url,
        discovery_url: None,
        algorithms: vec![SigningAlg::RS256, SigningAlg::ES256],
        leeway: Duration::from_secs(LEEWAY as u64),
        fhir_base: FHIR_BASE.into(),
        jwks_refresh_min_interval: Duration::from_secs(INTERVAL as u64),
        dev_hs256_secret: None,
        http_timeout: Duration::from_secs(2),
        accept_high_s: false,
    }
}

pub fn verifier(cfg: IdentityConfig) -> Verifier {
    // The binary installs the TLS provider at start-up; tests do it here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Verifier::new(cfg).unwrap()
}

/// The code a token is refused with.
pub async fn refusal(verifier: &Verifier, token: &str) -> &'static str {
    match verifier.verify(token, now()).await {
        Ok(identity) => panic!("token accepted as {identity:?}"),
        Err(e) => e.code(),
    }
}

/// An RSA provider with its verifier, keys loaded.
pub async fn rsa_setup() -> (Idp, Verifier) {
    let idp = Idp::start(vec![rsa_keys().0.jwk()]).await;
    let verifier = verifier(idp.config());
    assert_eq!(verifier.refresh_keys().await.unwrap(), 1);
    (idp, verifier)
}

// ---- valid tokens ----
