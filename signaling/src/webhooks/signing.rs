//! How a receiver knows an event is ours and unaltered. Every delivery carries two
//! signatures over the exact body bytes, made with the endpoint's secret:
//!
//! - LiveKit's scheme: `Authorization: <JWT>`, HS256, whose claim `sha256` is the standard
//!   base64 of the SHA-256 of the body (`iss` "metaclinic", `iat`, `exp` five minutes on).
//! - Standard Webhooks: `webhook-id` (the event id), `webhook-timestamp` (Unix seconds of
//!   this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! The key is the secret's UTF-8 bytes, or, for a secret written `whsec_<base64>` (as
//! Standard Webhooks libraries make them), the decoded bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

/// Lifetime of the `Authorization` JWT, seconds.
const JWT_TTL_S: i64 = 300;

/// An endpoint's secret, as key bytes.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A secret of at least 32 characters, or `whsec_` with base64 of at least 24 bytes.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        if let Some(b64) = secret.strip_prefix("whsec_") {
            let bytes = STANDARD
                .decode(b64)
                .map_err(|_| "whsec_ must be followed by base64".to_owned())?;
            if bytes.len() < 24 {
                return Err("a whsec_ secret must decode to at least 24 bytes".into());
            }
            return Ok(SigningKey(bytes));
        }
        if secret.chars().count() < 32 {
            return Err("at least 32 characters".into());
        }
        Ok(SigningKey(secret.as_bytes().to_vec()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The headers of one delivery attempt of `body` (event `id`) at Unix time `now`.
pub fn headers(key: &SigningKey, id: &str, now: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", jwt(key, now, body)),
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", standard_signature(key, id, now, body)),
    ]
}

/// The standard base64 of the body's SHA-256 (the JWT's `sha256` claim).
pub fn body_sha256(body: &[u8]) -> String {
    STANDARD.encode(Sha256::digest(body))
}

fn jwt(key: &SigningKey, now: i64, body: &[u8]) -> String {
    let claims = serde_json::json!({
        "iss": "metaclinic",
        "iat": now,
        "nbf": now - 5,
        "exp": now + JWT_TTL_S,
        "sha256": body_sha256(body),
    });
    // HS256 over a small JSON object cannot fail to encode.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.bytes()),
    )
    .unwrap_or_default()
}

/// `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`.
pub fn standard_signature(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn key() -> SigningKey {
        SigningKey::parse("a webhook secret of more than 32 characters").unwrap()
    }

    #[test]
    fn the_jwt_carries_the_body_hash_and_verifies_with_the_secret() {
        let body = br#"{"id":"evt_1","event":"consultation.started"}"#;
        let now = chrono::Utc::now().timestamp();
        let h = headers(&key(), "evt_1", now, body);
        let token = &h.iter().find(|(n, _)| *n == "authorization").unwrap().1;
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_secret(key().bytes()),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["sha256"], body_sha256(body));
        // Another secret does not verify it.
        let other = DecodingKey::from_secret(b"another secret of more than 32 characters");
        assert!(jsonwebtoken::decode::<serde_json::Value>(token, &other, &v).is_err());
    }

    #[test]
    fn the_standard_signature_covers_id_timestamp_and_body() {
        let body = b"{}";
        let s = standard_signature(&key(), "evt_1", 1_700_000_000, body);
        assert!(s.starts_with("v1,"));
        assert_eq!(s, standard_signature(&key(), "evt_1", 1_700_000_000, body));
        assert_ne!(s, standard_signature(&key(), "evt_2", 1_700_000_000, body));
        assert_ne!(s, standard_signature(&key(), "evt_1", 1_700_000_001, body));
        assert_ne!(
            s,
            standard_signature(&key(), "evt_1", 1_700_000_000, b"{ }")
        );
    }

    #[test]
    fn the_standard_webhooks_test_vector() {
        // From the Standard Webhooks reference libraries.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(SigningKey::parse("short").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
    }
}
