//! The classic JWT attacks against the identity verifier, each refused with its code.
//!
//! Real keys (RSA 2048, P-256) are generated here, and the identity provider's JWKS and OIDC
//! discovery document are served over real HTTP on 127.0.0.1 by an axum server each test starts.
//! `now` is the wall clock, as in production; token times are set relative to it.

// The library does not export the module yet.
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
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use identity::{AuthError, Identity, IdentityConfig, SigningAlg, Verifier};

const ISSUER: &str = "https://idp.hospital.example";
const AUDIENCE: &str = "metaclinic-signaling";
const FHIR_BASE: &str = "https://fhir.hospital.example/R4";
const LEEWAY: i64 = 30;
const INTERVAL: i64 = 30;
const DEV_SECRET: &str = "development-only-secret-of-32-bytes!";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---- keys ----

struct RsaKey {
    kid: &'static str,
    private: rsa::RsaPrivateKey,
}

impl RsaKey {
    fn generate(kid: &'static str) -> RsaKey {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        RsaKey { kid, private }
    }

    fn signer(&self) -> EncodingKey {
        EncodingKey::from_rsa_der(self.private.to_pkcs1_der().unwrap().as_bytes())
    }

    /// The public key as a JWK under another kid (what a provider publishes).
    fn jwk_as(&self, kid: &str) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be()),
        })
    }

    fn jwk(&self) -> Value {
        self.jwk_as(self.kid)
    }
}

/// RSA key generation is slow, so once per test binary: the provider's key and an attacker's.
fn rsa_keys() -> &'static (RsaKey, RsaKey) {
    static KEYS: OnceLock<(RsaKey, RsaKey)> = OnceLock::new();
    KEYS.get_or_init(|| (RsaKey::generate("rsa-1"), RsaKey::generate("attacker")))
}

struct EcKey {
    kid: &'static str,
    private: p256::SecretKey,
}

impl EcKey {
    fn generate(kid: &'static str) -> EcKey {
        EcKey {
            kid,
            private: p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
        }
    }

    fn signer(&self) -> EncodingKey {
        EncodingKey::from_ec_der(self.private.to_pkcs8_der().unwrap().as_bytes())
    }

    fn jwk(&self) -> Value {
        let point = self.private.public_key().to_encoded_point(false);
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "kid": self.kid,
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        })
    }
}

// ---- tokens ----

fn claims() -> Value {
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

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

fn without(mut claims: Value, field: &str) -> Value {
    claims.as_object_mut().unwrap().remove(field);
    claims
}

/// Sign any header and claims: attacks need headers no well-behaved library would write.
fn sign(header: Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{signature}")
}

fn rs256(key: &RsaKey, kid: &str, claims: &Value) -> String {
    sign(
        json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        claims,
        &key.signer(),
        Algorithm::RS256,
    )
}

/// An ES256 token as a well-behaved provider signs it: in low-s form (tests/ecdsa_high_s.rs
/// tries the other one).
fn es256(key: &EcKey, kid: &str, claims: &Value) -> String {
    identity::with_low_s(&sign(
        json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
        claims,
        &key.signer(),
        Algorithm::ES256,
    ))
}

/// Replace the payload of a signed token, keeping its header and signature.
fn swap_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
}

// ---- the identity provider ----

#[derive(Clone)]
struct IdpState {
    base: String,
    jwks: Arc<Mutex<Value>>,
    jwks_hits: Arc<AtomicUsize>,
    /// Slows the JWKS answer so that concurrent verifications overlap the fetch.
    delay: Duration,
}

struct Idp {
    state: IdpState,
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Idp {
        Self::start_with_delay(keys, Duration::ZERO).await
    }

    async fn start_with_delay(keys: Vec<Value>, delay: Duration) -> Idp {
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

    fn publish(&self, keys: Vec<Value>) {
        *self.state.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.state.base)
    }

    fn config(&self) -> IdentityConfig {
        config(Some(self.url("/jwks")))
    }
}

async fn jwks(State(idp): State<IdpState>) -> Json<Value> {
    idp.jwks_hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(idp.delay).await;
    let jwks = idp.jwks.lock().unwrap().clone();
    Json(jwks)
}

async fn discovery(State(idp): State<IdpState>) -> Json<Value> {
    Json(json!({ "issuer": ISSUER, "jwks_uri": format!("{}/jwks", idp.base) }))
}

async fn other_discovery(State(idp): State<IdpState>) -> Json<Value> {
    Json(json!({ "issuer": "https://evil.example", "jwks_uri": format!("{}/jwks", idp.base) }))
}

fn config(jwks_url: Option<String>) -> IdentityConfig {
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

fn verifier(cfg: IdentityConfig) -> Verifier {
    // The binary installs the TLS provider at start-up; tests do it here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Verifier::new(cfg).unwrap()
}

/// The code a token is refused with.
async fn refusal(verifier: &Verifier, token: &str) -> &'static str {
    match verifier.verify(token, now()).await {
        Ok(identity) => panic!("token accepted as {identity:?}"),
        Err(e) => e.code(),
    }
}

/// An RSA provider with its verifier, keys loaded.
async fn rsa_setup() -> (Idp, Verifier) {
    let idp = Idp::start(vec![rsa_keys().0.jwk()]).await;
    let verifier = verifier(idp.config());
    assert_eq!(verifier.refresh_keys().await.unwrap(), 1);
    (idp, verifier)
}

// ---- valid tokens ----

#[tokio::test]
async fn valid_rs256_token_is_accepted_with_fhir_user_normalized() {
    let (idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let claims = claims();
    let identity = verifier
        .verify(&rs256(key, key.kid, &claims), now())
        .await
        .unwrap();
    assert_eq!(
        identity,
        Identity {
            fhir_user: "Practitioner/prac-77".into(),
            subject: "user-77".into(),
            jti: Some("jti-1".into()),
            expires_at: claims["exp"].as_i64().unwrap(),
        }
    );
    // Verification reads the cached keys.
    assert_eq!((idp.jwks_hits(), verifier.jwks_fetches()), (1, 1));
}

#[tokio::test]
async fn valid_es256_token_is_accepted_with_keys_fetched_lazily() {
    let key = EcKey::generate("ec-1");
    let idp = Idp::start(vec![rsa_keys().0.jwk(), key.jwk()]).await;
    let verifier = verifier(idp.config());
    let claims = with(
        with(claims(), "fhirUser", json!("Patient/pat-1")),
        "aud",
        json!(["fhir", AUDIENCE]),
    );
    let identity = verifier
        .verify(&es256(&key, key.kid, &claims), now())
        .await
        .unwrap();
    assert_eq!(identity.fhir_user, "Patient/pat-1");
    assert_eq!(idp.jwks_hits(), 1);
}

#[tokio::test]
async fn keys_are_found_through_oidc_discovery() {
    let idp = Idp::start(vec![rsa_keys().0.jwk()]).await;
    let cfg = IdentityConfig {
        jwks_url: None,
        discovery_url: Some(idp.url("/.well-known/openid-configuration")),
        ..idp.config()
    };
    let verifier = verifier(cfg);
    let key = &rsa_keys().0;
    let identity = verifier
        .verify(&rs256(key, key.kid, &claims()), now())
        .await
        .unwrap();
    assert_eq!(identity.fhir_user, "Practitioner/prac-77");
}

#[tokio::test]
async fn discovery_document_of_another_issuer_is_refused() {
    let idp = Idp::start(vec![rsa_keys().0.jwk()]).await;
    let cfg = IdentityConfig {
        jwks_url: None,
        discovery_url: Some(idp.url("/other/.well-known/openid-configuration")),
        ..idp.config()
    };
    let verifier = verifier(cfg);
    let key = &rsa_keys().0;
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &claims())).await,
        "jwks_unavailable"
    );
    assert_eq!(idp.jwks_hits(), 0);
}

#[tokio::test]
async fn token_without_kid_needs_a_single_key_of_its_type() {
    let (idp, verifier) = rsa_setup().await;
    let (key, other) = rsa_keys();
    let no_kid = sign(
        json!({"alg": "RS256"}),
        &claims(),
        &key.signer(),
        Algorithm::RS256,
    );
    assert!(verifier.verify(&no_kid, now()).await.is_ok());

    // Two RSA keys: which one is meant is not guessed.
    idp.publish(vec![key.jwk(), other.jwk_as("rsa-2")]);
    assert_eq!(verifier.refresh_keys().await.unwrap(), 2);
    assert_eq!(refusal(&verifier, &no_kid).await, "unknown_key");
}

// ---- refused tokens ----

#[tokio::test]
async fn empty_and_malformed_tokens_are_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let token = rs256(key, key.kid, &claims());
    assert_eq!(refusal(&verifier, "").await, "token_missing");
    for bad in [
        "garbage".to_owned(),
        "a.b".to_owned(),
        format!("Bearer {token}"),
        format!("{token}.extra"),
        format!(
            "{}.{}",
            b64(r#"{"typ":"JWT"}"#),
            token.split_once('.').unwrap().1
        ),
    ] {
        assert_eq!(refusal(&verifier, &bad).await, "token_malformed", "{bad}");
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let signed = rs256(key, key.kid, &claims());
    let signature = signed.rsplit_once('.').unwrap().1;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let unsigned = format!(
            "{}.{}.",
            b64(json!({"alg": alg, "kid": key.kid}).to_string()),
            b64(claims().to_string())
        );
        assert_eq!(
            refusal(&verifier, &unsigned).await,
            "algorithm_not_allowed",
            "{alg}"
        );
        // Keeping a valid signature does not help.
        let resigned = format!("{unsigned}{signature}");
        assert_eq!(
            refusal(&verifier, &resigned).await,
            "algorithm_not_allowed",
            "{alg}"
        );
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let public = key.private.to_public_key();
    let public_forms: Vec<Vec<u8>> = vec![
        public
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
            .into_bytes(),
        public.to_pkcs1_pem(LineEnding::LF).unwrap().into_bytes(),
        public.to_public_key_der().unwrap().as_bytes().to_vec(),
        public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        public.n().to_bytes_be(),
        key.jwk().to_string().into_bytes(),
    ];
    let forge = |secret: &[u8]| {
        sign(
            json!({"alg": "HS256", "kid": key.kid}),
            &claims(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
    };

    // Production: HS256 is not an allowed algorithm at all.
    for secret in &public_forms {
        assert_eq!(
            refusal(&verifier, &forge(secret)).await,
            "algorithm_not_allowed"
        );
    }

    // Development: HS256 is allowed, but only the configured secret verifies it.
    let dev = self::verifier(IdentityConfig {
        algorithms: vec![SigningAlg::RS256, SigningAlg::HS256],
        dev_hs256_secret: Some(DEV_SECRET.into()),
        ..idp.config()
    });
    for secret in &public_forms {
        assert_eq!(refusal(&dev, &forge(secret)).await, "signature_invalid");
    }
    let dev_token = forge(DEV_SECRET.as_bytes());
    assert_eq!(
        dev.verify(&dev_token, now()).await.unwrap().fhir_user,
        "Practitioner/prac-77"
    );
    assert_eq!(
        refusal(&verifier, &dev_token).await,
        "algorithm_not_allowed"
    );
}

#[tokio::test]
async fn algorithm_must_fit_the_key() {
    let (idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let ec = EcKey::generate("ec-1");

    // An ES256 token naming the RSA key.
    assert_eq!(
        refusal(&verifier, &es256(&ec, key.kid, &claims())).await,
        "algorithm_not_allowed"
    );
    // An algorithm that is not pinned, even with the right key.
    let rs384 = sign(
        json!({"alg": "RS384", "kid": key.kid}),
        &claims(),
        &key.signer(),
        Algorithm::RS384,
    );
    assert_eq!(refusal(&verifier, &rs384).await, "algorithm_not_allowed");
    // Pinned, but the JWK itself says RS256 only.
    let wide = self::verifier(IdentityConfig {
        algorithms: vec![SigningAlg::RS256, SigningAlg::RS384],
        ..idp.config()
    });
    assert_eq!(refusal(&wide, &rs384).await, "algorithm_not_allowed");
}

#[tokio::test]
async fn expired_token_beyond_leeway_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let claims = with(claims(), "exp", json!(now() - LEEWAY - 1));
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &claims)).await,
        "token_expired"
    );
}

#[tokio::test]
async fn expired_token_within_leeway_is_accepted() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let claims = with(claims(), "exp", json!(now() - LEEWAY + 5));
    assert!(
        verifier
            .verify(&rs256(key, key.kid, &claims), now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let claims = without(claims(), "exp");
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &claims)).await,
        "token_malformed"
    );
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let early = with(claims(), "nbf", json!(now() + LEEWAY + 5));
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &early)).await,
        "token_not_yet_valid"
    );
    let skewed = with(claims(), "nbf", json!(now() + LEEWAY - 5));
    assert!(
        verifier
            .verify(&rs256(key, key.kid, &skewed), now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    for aud in [
        json!("another-app"),
        json!(["another-app", "fhir"]),
        json!([]),
        json!(format!("{AUDIENCE} ")),
        json!(null),
    ] {
        let claims = with(claims(), "aud", aud.clone());
        assert_eq!(
            refusal(&verifier, &rs256(key, key.kid, &claims)).await,
            "audience_invalid",
            "{aud}"
        );
    }
    let claims = without(claims(), "aud");
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &claims)).await,
        "audience_invalid"
    );
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    for iss in [
        json!("https://evil.example"),
        json!(format!("{ISSUER}/")),
        json!(ISSUER.to_uppercase()),
        json!(null),
    ] {
        let claims = with(claims(), "iss", iss.clone());
        assert_eq!(
            refusal(&verifier, &rs256(key, key.kid, &claims)).await,
            "issuer_invalid",
            "{iss}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval() {
    let key = &rsa_keys().0;
    let idp = Idp::start_with_delay(vec![key.jwk()], Duration::from_millis(100)).await;
    let verifier = verifier(idp.config());
    verifier.refresh_keys().await.unwrap();
    assert_eq!(idp.jwks_hits(), 1);

    // A burst of 20 tokens with made-up kids, concurrently: they share one refetch.
    let now = now();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..20 {
        let verifier = verifier.clone();
        let token = rs256(key, &format!("made-up-{i}"), &claims());
        burst.spawn(async move { verifier.verify(&token, now).await });
    }
    while let Some(result) = burst.join_next().await {
        assert_eq!(result.unwrap(), Err(AuthError::UnknownKey));
    }
    assert_eq!(idp.jwks_hits(), 2);
    assert_eq!(verifier.jwks_fetches(), 2);

    // Still within the interval: no fetch; known keys keep working.
    let token = rs256(key, "made-up-late", &claims());
    assert_eq!(
        verifier.verify(&token, now + INTERVAL - 1).await,
        Err(AuthError::UnknownKey)
    );
    assert!(
        verifier
            .verify(&rs256(key, key.kid, &claims()), now + 1)
            .await
            .is_ok()
    );
    assert_eq!(idp.jwks_hits(), 2);

    // After the interval one more fetch is allowed.
    assert_eq!(
        verifier.verify(&token, now + INTERVAL).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(idp.jwks_hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tokens_with_a_new_kid_share_one_refetch() {
    let old = &rsa_keys().0;
    let idp = Idp::start_with_delay(vec![old.jwk()], Duration::from_millis(100)).await;
    let verifier = verifier(idp.config());
    verifier.refresh_keys().await.unwrap();

    let new = EcKey::generate("ec-2");
    idp.publish(vec![old.jwk(), new.jwk()]);
    let now = now();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let verifier = verifier.clone();
        let token = es256(&new, new.kid, &claims());
        burst.spawn(async move { verifier.verify(&token, now).await });
    }
    while let Some(result) = burst.join_next().await {
        assert_eq!(result.unwrap().unwrap().fhir_user, "Practitioner/prac-77");
    }
    assert_eq!(idp.jwks_hits(), 2);
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let token = rs256(key, key.kid, &claims());
    let promoted = with(
        claims(),
        "fhirUser",
        json!(format!("{FHIR_BASE}/Practitioner/chief-of-medicine")),
    );
    assert_eq!(
        refusal(&verifier, &swap_payload(&token, &promoted)).await,
        "signature_invalid"
    );

    let ec = EcKey::generate("ec-1");
    let ec_idp = Idp::start(vec![ec.jwk()]).await;
    let ec_verifier = self::verifier(ec_idp.config());
    let token = es256(&ec, ec.kid, &claims());
    assert_eq!(
        refusal(&ec_verifier, &swap_payload(&token, &promoted)).await,
        "signature_invalid"
    );

    // The signature itself: cut off, or altered.
    let (input, _) = token.rsplit_once('.').unwrap();
    assert_eq!(
        refusal(&ec_verifier, &format!("{input}.")).await,
        "signature_invalid"
    );
    let mut bytes = URL_SAFE_NO_PAD
        .decode(token.rsplit_once('.').unwrap().1)
        .unwrap();
    bytes[10] ^= 1;
    assert_eq!(
        refusal(&ec_verifier, &format!("{input}.{}", b64(&bytes))).await,
        "signature_invalid"
    );
}

#[tokio::test]
async fn token_signed_by_another_key_with_a_known_kid_is_refused() {
    let (idp_key, attacker) = rsa_keys();
    let ec = EcKey::generate("ec-1");
    let idp = Idp::start(vec![idp_key.jwk(), ec.jwk()]).await;
    let verifier = verifier(idp.config());

    assert_eq!(
        refusal(&verifier, &rs256(attacker, idp_key.kid, &claims())).await,
        "signature_invalid"
    );
    let ec_attacker = EcKey::generate("ec-1");
    assert_eq!(
        refusal(&verifier, &es256(&ec_attacker, ec.kid, &claims())).await,
        "signature_invalid"
    );

    // Naming its own key in the header (jwk, jku, x5u) changes nothing: keys come from our JWKS.
    let header = json!({
        "alg": "RS256", "kid": idp_key.kid,
        "jwk": attacker.jwk_as(idp_key.kid),
        "jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert.pem",
    });
    let token = sign(header, &claims(), &attacker.signer(), Algorithm::RS256);
    assert_eq!(refusal(&verifier, &token).await, "signature_invalid");
}

#[tokio::test]
async fn missing_fhir_user_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    let claims_without = without(claims(), "fhirUser");
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &claims_without)).await,
        "fhir_user_missing"
    );
    let null = with(claims(), "fhirUser", Value::Null);
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &null)).await,
        "fhir_user_missing"
    );
    let number = with(claims(), "fhirUser", json!(77));
    assert_eq!(
        refusal(&verifier, &rs256(key, key.kid, &number)).await,
        "fhir_user_invalid"
    );
}

#[tokio::test]
async fn fhir_user_of_another_base_or_type_is_refused() {
    let (_idp, verifier) = rsa_setup().await;
    let key = &rsa_keys().0;
    for fhir_user in [
        "https://fhir.other-hospital.example/R4/Practitioner/prac-77",
        "https://fhir.hospital.example/R5/Practitioner/prac-77",
        "https://fhir.hospital.example/R4/Organization/org-1",
        "https://fhir.hospital.example/R4/Practitioner/prac-77/_history/1",
        "Practitioner/../Patient",
        "Practitioner/",
    ] {
        let claims = with(claims(), "fhirUser", json!(fhir_user));
        assert_eq!(
            refusal(&verifier, &rs256(key, key.kid, &claims)).await,
            "fhir_user_invalid",
            "{fhir_user}"
        );
    }
}

#[tokio::test]
async fn rotated_key_is_accepted_after_refetch_and_withdrawn_key_refused() {
    let (idp, verifier) = rsa_setup().await;
    let old = &rsa_keys().0;
    let new = EcKey::generate("ec-2");

    // The provider publishes a new key after we started.
    idp.publish(vec![old.jwk(), new.jwk()]);
    let identity = verifier
        .verify(&es256(&new, new.kid, &claims()), now())
        .await
        .unwrap();
    assert_eq!(identity.fhir_user, "Practitioner/prac-77");
    assert_eq!(idp.jwks_hits(), 2);

    // Then withdraws the old one: once we refetch (here for an unknown kid), it is refused.
    idp.publish(vec![new.jwk()]);
    let later = now() + INTERVAL;
    let unknown = rs256(old, "rsa-9", &claims());
    assert_eq!(
        verifier.verify(&unknown, later).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(idp.jwks_hits(), 3);
    assert_eq!(
        verifier
            .verify(&rs256(old, old.kid, &claims()), later)
            .await,
        Err(AuthError::UnknownKey)
    );
}

#[tokio::test]
async fn jwks_endpoint_down_is_jwks_unavailable() {
    let key = &rsa_keys().0;
    let token = rs256(key, key.kid, &claims());

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let verifier = verifier(config(Some(format!("http://{closed}/jwks"))));
    assert_eq!(
        verifier.refresh_keys().await,
        Err(AuthError::JwksUnavailable)
    );
    assert_eq!(refusal(&verifier, &token).await, "jwks_unavailable");
    // Rate limited, and still no keys: the answer stays the same.
    assert_eq!(refusal(&verifier, &token).await, "jwks_unavailable");

    // An error status, and a page that is not a JWK Set.
    let idp = Idp::start(vec![key.jwk()]).await;
    for path in ["/broken", "/html"] {
        let verifier = self::verifier(config(Some(idp.url(path))));
        assert_eq!(
            refusal(&verifier, &token).await,
            "jwks_unavailable",
            "{path}"
        );
    }
}
