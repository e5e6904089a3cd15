//! SMART Backend Services authorization (client_credentials with a signed JWT assertion):
//! our client asks the hospital's authorization server for an access token, signing the
//! request with its own key, and keeps the token until shortly before it expires.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::BookingError;

/// The signing key of our client assertions.
pub struct ClientAssertionKey {
    pub key: EncodingKey,
    pub algorithm: Algorithm,
    pub key_id: String,
}

impl ClientAssertionKey {
    /// From a PKCS#8 PEM file; `algorithm` is "ES384" or "RS384".
    pub fn from_pem(pem: &[u8], algorithm: &str, key_id: &str) -> Result<Self, String> {
        let (key, algorithm) = match algorithm {
            "ES384" => (
                EncodingKey::from_ec_pem(pem).map_err(|e| e.to_string())?,
                Algorithm::ES384,
            ),
            "RS384" => (
                EncodingKey::from_rsa_pem(pem).map_err(|e| e.to_string())?,
                Algorithm::RS384,
            ),
            other => {
                return Err(format!(
                    "{other} is not a SMART Backend Services algorithm (ES384, RS384)"
                ));
            }
        };
        Ok(ClientAssertionKey {
            key,
            algorithm,
            key_id: key_id.to_owned(),
        })
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

struct CachedToken {
    value: String,
    valid_until: Instant,
}

/// Assertions live at most this long (the specification's limit is five minutes).
const ASSERTION_LIFETIME_S: i64 = 240;
/// Renew a token this long before it expires.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

pub struct SmartAuth {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    key: ClientAssertionKey,
    cached: Mutex<Option<CachedToken>>,
    pub(super) fetches: std::sync::atomic::AtomicU64,
}

impl SmartAuth {
    pub fn new(
        http: reqwest::Client,
        token_url: &str,
        client_id: &str,
        scope: &str,
        key: ClientAssertionKey,
    ) -> Self {
        SmartAuth {
            http,
            token_url: token_url.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            key,
            cached: Mutex::new(None),
            fetches: Default::default(),
        }
    }

    fn assertion(&self) -> Result<String, BookingError> {
        let now = chrono::Utc::now().timestamp();
        let claims = AssertionClaims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: &self.token_url,
            exp: now + ASSERTION_LIFETIME_S,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(self.key.algorithm);
        header.kid = Some(self.key.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.key.key).map_err(|e| {
            BookingError::Unavailable(format!("cannot sign the client assertion: {e}"))
        })
    }

    /// A valid access token: the cached one, or a new one (one request at a time).
    pub async fn token(&self) -> Result<String, BookingError> {
        let mut cached = self.cached.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.valid_until
        {
            return Ok(t.value.clone());
        }
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.scope.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &self.assertion()?),
        ];
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| BookingError::Unavailable(format!("token endpoint: {e}")))?;
        if !resp.status().is_success() {
            return Err(BookingError::Unavailable(format!(
                "token endpoint answered {}",
                resp.status()
            )));
        }
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|e| BookingError::Unavailable(format!("token endpoint: {e}")))?;
        if body
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(BookingError::Unavailable(
                "token endpoint issued a non-bearer token".into(),
            ));
        }
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(300));
        *cached = Some(CachedToken {
            value: body.access_token.clone(),
            valid_until: Instant::now() + lifetime.saturating_sub(RENEW_MARGIN),
        });
        Ok(body.access_token)
    }

    /// Forget the cached token (the server refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}
