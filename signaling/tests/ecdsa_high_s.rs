//! ECDSA signatures are malleable: for every valid (r, s), (r, n - s) verifies too, so a
//! token seen once could be turned into a second, byte-for-byte different token with the
//! same claims. Only the low-s form is accepted; the high-s twin is `signature_invalid`.
//! Keys are generated here; the JWKS is served over HTTP on 127.0.0.1 (as in jwt_attacks.rs).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use p256::elliptic_curve::rand_core::OsRng;
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

use metaclinic_signaling::identity::{IdentityConfig, SigningAlg, Verifier, with_low_s};

const ISSUER: &str = "https://idp.hospital.example";
const AUDIENCE: &str = "metaclinic-signaling";
const FHIR_BASE: &str = "https://fhir.hospital.example/R4";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A signed token (in low-s form): header `alg`/`kid`, fresh claims.
fn token(alg: Algorithm, name: &str, kid: &str, key: &EncodingKey) -> String {
    let header = json!({"alg": name, "typ": "JWT", "kid": kid});
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "jti": "jti-1",
        "exp": now() + 300, "fhirUser": "Patient/pat-1",
    });
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    // p256 and p384 sign with either form of s, half the time each.
    with_low_s(&format!("{input}.{signature}"))
}

/// The same token with its signature's `s` replaced by `n - s`, with `twin` computing the
/// other signature from the JOSE bytes `r || s`.
fn high_s_twin(token: &str, twin: impl Fn(&[u8]) -> (Vec<u8>, bool)) -> String {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let (other, other_is_high) = twin(&bytes);
    assert!(other_is_high, "the twin of a low-s signature is high-s");
    format!("{input}.{}", b64(other))
}

async fn serve_jwks(keys: Vec<Value>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let jwks = json!({ "keys": keys });
    let app = Router::new().route("/jwks", get(move || async move { Json(jwks) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn verifier(jwks_url: String) -> Verifier {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Verifier::new(IdentityConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(jwks_url),
        algorithms: vec![SigningAlg::ES256, SigningAlg::ES384],
        fhir_base: FHIR_BASE.into(),
        http_timeout: Duration::from_secs(2),
        ..IdentityConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn high_s_es256_and_es384_signatures_are_refused() {
    use p256::ecdsa::signature::Verifier as _;
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    let p256_key = p256::SecretKey::random(&mut OsRng);
    let p384_key = p384::SecretKey::random(&mut OsRng);
    let point = p256_key.public_key().to_encoded_point(false);
    let point384 = p384_key.public_key().to_encoded_point(false);
    let jwks_url = serve_jwks(vec![
        json!({"kty": "EC", "crv": "P-256", "kid": "ec256", "use": "sig",
               "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
        json!({"kty": "EC", "crv": "P-384", "kid": "ec384", "use": "sig",
               "x": b64(point384.x().unwrap()), "y": b64(point384.y().unwrap())}),
    ])
    .await;
    let verifier = verifier(jwks_url);

    // ES256.
    let signer = EncodingKey::from_ec_der(p256_key.to_pkcs8_der().unwrap().as_bytes());
    let good = token(Algorithm::ES256, "ES256", "ec256", &signer);
    let twin = high_s_twin(&good, |bytes| {
        let sig = p256::ecdsa::Signature::from_slice(bytes).unwrap();
        let (r, s) = sig.split_scalars();
        let other = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        (other.to_bytes().to_vec(), other.normalize_s().is_some())
    });
    // The twin is a valid signature of the same bytes: only the low-s rule refuses it.
    let (input, sig) = twin.rsplit_once('.').unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    let verifying = p256::ecdsa::VerifyingKey::from(p256_key.public_key());
    assert!(verifying.verify(input.as_bytes(), &sig).is_ok());
    assert_eq!(
        verifier.verify(&good, now()).await.unwrap().fhir_user,
        "Patient/pat-1"
    );
    assert_eq!(
        verifier.verify(&twin, now()).await.unwrap_err().code(),
        "signature_invalid"
    );

    // ES384.
    let signer = EncodingKey::from_ec_der(p384_key.to_pkcs8_der().unwrap().as_bytes());
    let good = token(Algorithm::ES384, "ES384", "ec384", &signer);
    let twin = high_s_twin(&good, |bytes| {
        let sig = p384::ecdsa::Signature::from_slice(bytes).unwrap();
        let (r, s) = sig.split_scalars();
        let other = p384::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        (other.to_bytes().to_vec(), other.normalize_s().is_some())
    });
    assert!(verifier.verify(&good, now()).await.is_ok());
    assert_eq!(
        verifier.verify(&twin, now()).await.unwrap_err().code(),
        "signature_invalid"
    );
}

#[tokio::test]
async fn a_provider_that_does_not_normalize_can_be_allowed() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let key = p256::SecretKey::random(&mut OsRng);
    let point = key.public_key().to_encoded_point(false);
    let jwks_url = serve_jwks(vec![json!({"kty": "EC", "crv": "P-256", "kid": "ec256",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})])
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lenient = Verifier::new(IdentityConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(jwks_url),
        algorithms: vec![SigningAlg::ES256],
        fhir_base: FHIR_BASE.into(),
        accept_high_s: true,
        ..IdentityConfig::default()
    })
    .unwrap();
    let signer = EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes());
    let good = token(Algorithm::ES256, "ES256", "ec256", &signer);
    let twin = high_s_twin(&good, |bytes| {
        let sig = p256::ecdsa::Signature::from_slice(bytes).unwrap();
        let (r, s) = sig.split_scalars();
        let other = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        (other.to_bytes().to_vec(), other.normalize_s().is_some())
    });
    assert!(lenient.verify(&twin, now()).await.is_ok());
    // And the low-s form of what such a provider signs is what a strict verifier takes.
    assert_eq!(with_low_s(&twin), good);
}

#[tokio::test]
async fn signatures_of_the_wrong_length_are_refused_before_any_key_is_used() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let p256_key = p256::SecretKey::random(&mut OsRng);
    let point = p256_key.public_key().to_encoded_point(false);
    let jwks_url = serve_jwks(vec![json!({"kty": "EC", "crv": "P-256", "kid": "ec256",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})])
    .await;
    let verifier = verifier(jwks_url);
    let signer = EncodingKey::from_ec_der(p256_key.to_pkcs8_der().unwrap().as_bytes());
    let good = token(Algorithm::ES256, "ES256", "ec256", &signer);
    let (input, signature) = good.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes.push(0);
    let long = format!("{input}.{}", b64(&bytes));
    assert_eq!(
        verifier.verify(&long, now()).await.unwrap_err().code(),
        "signature_invalid"
    );
}
