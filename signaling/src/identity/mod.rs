//! Who is calling: verification of the hospital identity provider's JWT (SMART on FHIR) and
//! the caller's `fhirUser`, normalized. Nobody joins a consultation without passing here.
//!
//! The order of checks is the defence against the classic JWT attacks:
//! 1. the header is parsed on its own and `alg` must be one we pinned (`none`, and HS256 outside
//!    development, never are);
//! 2. the key comes from the provider's JWKS by `kid` and must fit `alg` (a published RSA key
//!    is never an HMAC secret; the token's own `jwk`/`jku` headers are ignored);
//! 3. the signature is verified before any claim is read, and an ECDSA signature only in its
//!    low-s form (its high-s twin would be a second token from the same signing);
//! 4. `iss`, `aud`, `exp`, `nbf` are checked against the `now` we are given, with a small leeway;
//! 5. `fhirUser` must be present and name a user resource on our FHIR server.
//!
//! Layout: [`token`] parses the compact form and the claims, [`jwks`] holds the keys and fetches
//! them, [`fhir_user`] normalizes the reference.
//!
//! Logging: tokens and claims are never logged, except the `jti` and the normalized reference.

// Until lib.rs exports this module it is compiled by path from tests/, where the parts of the
// API that only the service uses look dead.

mod fhir_user;
mod jwks;
mod token;

pub use fhir_user::normalize_fhir_user;
pub use token::with_low_s;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use reqwest::Url;

use jwks::{KeySet, Lookup, PublicKey};
use token::{Claims, Compact};

/// Clock skew we tolerate at most; more would stretch every token's lifetime.
const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// Keys older than this are refetched (subject to the refetch rate limit) so that a key the
/// provider withdrew stops being accepted even if no token ever names an unknown kid.
const MAX_KEY_AGE_SECS: u64 = 3600;

/// Development HMAC secrets shorter than this are refused (RFC 7518 §3.2: at least the hash size).
const MIN_HS256_SECRET_BYTES: usize = 32;

/// The JWS algorithms we can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
pub enum SigningAlg {
    RS256,
    RS384,
    ES256,
    ES384,
    /// Shared-secret tokens, for development only: needs [`IdentityConfig::dev_hs256_secret`].
    HS256,
}

impl SigningAlg {
    /// The algorithm a JOSE `alg` names, exactly (so "none", "None" and "rs256" name none).
    pub fn from_jose(name: &str) -> Option<SigningAlg> {
        Some(match name {
            "RS256" => SigningAlg::RS256,
            "RS384" => SigningAlg::RS384,
            "ES256" => SigningAlg::ES256,
            "ES384" => SigningAlg::ES384,
            "HS256" => SigningAlg::HS256,
            _ => return None,
        })
    }

    fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            SigningAlg::RS256 => jsonwebtoken::Algorithm::RS256,
            SigningAlg::RS384 => jsonwebtoken::Algorithm::RS384,
            SigningAlg::ES256 => jsonwebtoken::Algorithm::ES256,
            SigningAlg::ES384 => jsonwebtoken::Algorithm::ES384,
            SigningAlg::HS256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The exact `iss` of accepted tokens.
    pub issuer: String,
    /// Must be in `aud` (a string or an array).
    pub audience: String,
    /// The JWKS address; set this or `discovery_url`, not both.
    pub jwks_url: Option<String>,
    /// OIDC discovery document (`.well-known/openid-configuration`), whose `jwks_uri` is used.
    pub discovery_url: Option<String>,
    /// Accepted algorithms, pinned. HS256 needs `dev_hs256_secret`.
    pub algorithms: Vec<SigningAlg>,
    /// Clock skew allowed on `exp`/`nbf`; clamped to 60 s.
    pub leeway: Duration,
    /// The FHIR server absolute `fhirUser` URLs must be under, e.g. "https://fhir.hospital.example/R4".
    pub fhir_base: String,
    /// At most one JWKS refetch per this interval when tokens name unknown keys.
    pub jwks_refresh_min_interval: Duration,
    /// Development only: the HS256 shared secret (at least 32 bytes).
    pub dev_hs256_secret: Option<String>,
    /// Timeout of each JWKS or discovery request.
    pub http_timeout: Duration,
    /// Accept ECDSA signatures in high-s form too (for an identity provider that does not
    /// normalize its signatures; such a token's high-s twin is then a second valid token).
    pub accept_high_s: bool,
}

impl Default for IdentityConfig {
    /// Defaults for everything but the provider-specific fields, which stay empty (and are then
    /// refused by [`Verifier::new`]).
    fn default() -> Self {
        IdentityConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            discovery_url: None,
            algorithms: vec![SigningAlg::RS256, SigningAlg::ES256],
            leeway: Duration::from_secs(30),
            fhir_base: String::new(),
            jwks_refresh_min_interval: Duration::from_secs(30),
            dev_hs256_secret: None,
            http_timeout: Duration::from_secs(5),
            accept_high_s: false,
        }
    }
}

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Normalized relative reference, e.g. "Practitioner/prac-77".
    pub fhir_user: String,
    pub subject: String,
    pub jti: Option<String>,
    /// `exp`, seconds since the epoch: the session must not outlive it.
    pub expires_at: i64,
}

/// Why a token was refused. Messages are safe to show the client: they hold no token content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    TokenMissing,
    #[error("malformed token")]
    TokenMalformed,
    #[error("signing algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("invalid signature")]
    SignatureInvalid,
    #[error("token expired")]
    TokenExpired,
    #[error("token not yet valid")]
    TokenNotYetValid,
    #[error("wrong issuer")]
    IssuerInvalid,
    #[error("wrong audience")]
    AudienceInvalid,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("fhirUser claim missing")]
    FhirUserMissing,
    #[error("fhirUser claim invalid")]
    FhirUserInvalid,
    /// The identity provider's keys could not be fetched; the details are in the server log.
    #[error("identity provider keys unavailable")]
    JwksUnavailable,
}

impl AuthError {
    /// Stable code for clients, metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::TokenMissing => "token_missing",
            AuthError::TokenMalformed => "token_malformed",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::SignatureInvalid => "signature_invalid",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::IssuerInvalid => "issuer_invalid",
            AuthError::AudienceInvalid => "audience_invalid",
            AuthError::UnknownKey => "unknown_key",
            AuthError::FhirUserMissing => "fhir_user_missing",
            AuthError::FhirUserInvalid => "fhir_user_invalid",
            AuthError::JwksUnavailable => "jwks_unavailable",
        }
    }
}

/// A configuration the verifier refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("identity.{0} must not be empty")]
    Missing(&'static str),
    #[error("identity: set exactly one of jwks_url and discovery_url")]
    KeySource,
    #[error("identity.{field}: {reason}")]
    BadUrl { field: &'static str, reason: String },
    #[error("identity.algorithms: HS256 requires dev_hs256_secret")]
    Hs256WithoutSecret,
    #[error("identity.dev_hs256_secret must be at least {MIN_HS256_SECRET_BYTES} bytes")]
    WeakSecret,
    #[error("identity.http_timeout must be positive")]
    ZeroTimeout,
    #[error("identity: no rustls crypto provider installed (the binary installs one at start-up)")]
    NoTlsProvider,
    #[error("identity: HTTP client: {0}")]
    HttpClient(String),
}

/// Verifies tokens. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: String,
    algorithms: Vec<SigningAlg>,
    leeway: i64,
    fhir_base: String,
    refresh_min_interval: u64,
    hs256: Option<DecodingKey>,
    source: KeySource,
    http: reqwest::Client,
    /// A std lock: held only to clone or swap the `Arc`, never across an await.
    keys: RwLock<Arc<Cache>>,
    /// A tokio lock, held across the fetch: verifications that miss the cache together wait for
    /// one fetch and then look again, instead of each fetching.
    fetch: tokio::sync::Mutex<FetchState>,
    fetches: AtomicU64,
    accept_high_s: bool,
}

enum KeySource {
    Jwks(Url),
    Discovery(Url),
}

#[derive(Default)]
struct Cache {
    keys: KeySet,
    /// When the keys were fetched (seconds since the epoch); `None` before the first fetch.
    fetched_at: Option<i64>,
}

impl Cache {
    fn is_stale(&self, now: i64) -> bool {
        self.fetched_at
            .is_none_or(|at| now.abs_diff(at) >= MAX_KEY_AGE_SECS)
    }

    /// What these keys decide for a lookup; `None` when a fetch could change the answer
    /// (unknown kid, or keys too old to trust without looking again).
    fn decide(&self, lookup: &Lookup, now: i64) -> Option<Result<Arc<PublicKey>, AuthError>> {
        match lookup {
            Lookup::Found(key) if !self.is_stale(now) => Some(Ok(key.clone())),
            Lookup::WrongAlg => Some(Err(AuthError::AlgorithmNotAllowed)),
            Lookup::Ambiguous => Some(Err(AuthError::UnknownKey)),
            Lookup::Found(_) | Lookup::NotFound => None,
        }
    }
}

#[derive(Default)]
struct FetchState {
    /// The JWKS address, once discovery found it.
    jwks_url: Option<Url>,
    /// When a token last caused a fetch: the rate limit. Fetches by `refresh_keys` (operator
    /// action, not attacker-driven) do not count.
    last_token_fetch: Option<i64>,
}

impl Verifier {
    pub fn new(cfg: IdentityConfig) -> Result<Verifier, ConfigError> {
        for (field, value) in [
            ("issuer", &cfg.issuer),
            ("audience", &cfg.audience),
            ("fhir_base", &cfg.fhir_base),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Missing(field));
            }
        }
        if cfg.algorithms.is_empty() {
            return Err(ConfigError::Missing("algorithms"));
        }
        let fhir_base = parse_url("fhir_base", &cfg.fhir_base)?;
        if fhir_base.query().is_some() || fhir_base.fragment().is_some() {
            return Err(ConfigError::BadUrl {
                field: "fhir_base",
                reason: "no query or fragment allowed".into(),
            });
        }
        let source = match (&cfg.jwks_url, &cfg.discovery_url) {
            (Some(url), None) => KeySource::Jwks(parse_url("jwks_url", url)?),
            (None, Some(url)) => KeySource::Discovery(parse_url("discovery_url", url)?),
            _ => return Err(ConfigError::KeySource),
        };
        let hs256 = match (
            &cfg.dev_hs256_secret,
            cfg.algorithms.contains(&SigningAlg::HS256),
        ) {
            (None, true) => return Err(ConfigError::Hs256WithoutSecret),
            (Some(secret), true) if secret.len() < MIN_HS256_SECRET_BYTES => {
                return Err(ConfigError::WeakSecret);
            }
            (Some(secret), true) => {
                tracing::warn!(
                    "identity: HS256 development tokens are accepted; never in production"
                );
                Some(DecodingKey::from_secret(secret.as_bytes()))
            }
            (Some(_), false) => {
                tracing::warn!(
                    "identity: dev_hs256_secret is set but HS256 is not in algorithms; ignored"
                );
                None
            }
            (None, false) => None,
        };
        let leeway = if cfg.leeway > MAX_LEEWAY {
            tracing::warn!(configured = ?cfg.leeway, used = ?MAX_LEEWAY, "identity: leeway clamped");
            MAX_LEEWAY
        } else {
            cfg.leeway
        };
        if cfg.http_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        // reqwest panics when building a client without a rustls provider; say so instead.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(ConfigError::NoTlsProvider);
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .connect_timeout(cfg.http_timeout)
            // The keys are fetched from the configured (or discovered) address and nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;

        // The rate limit works in whole seconds, like the `now` it is measured with.
        let refresh_min_interval = cfg.jwks_refresh_min_interval.as_secs()
            + u64::from(cfg.jwks_refresh_min_interval.subsec_nanos() > 0);
        Ok(Verifier {
            inner: Arc::new(Inner {
                issuer: cfg.issuer,
                audience: cfg.audience,
                algorithms: cfg.algorithms,
                leeway: leeway.as_secs() as i64,
                fhir_base: cfg.fhir_base,
                refresh_min_interval,
                hs256,
                source,
                http,
                keys: RwLock::new(Arc::new(Cache::default())),
                fetch: tokio::sync::Mutex::new(FetchState::default()),
                fetches: AtomicU64::new(0),
                accept_high_s: cfg.accept_high_s,
            }),
        })
    }

    /// Verify a raw JWT (without "Bearer ") at time `now` (seconds since the epoch).
    pub async fn verify(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        let result = self.verify_inner(token, now).await;
        match &result {
            Ok(id) => tracing::debug!(fhir_user = %id.fhir_user, jti = ?id.jti, "token accepted"),
            Err(e) => tracing::debug!(code = e.code(), "token refused"),
        }
        result
    }

    async fn verify_inner(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        let inner = &self.inner;
        let compact = Compact::parse(token)?;
        let alg = SigningAlg::from_jose(&compact.header.alg)
            .filter(|alg| inner.algorithms.contains(alg))
            .ok_or(AuthError::AlgorithmNotAllowed)?;

        let from_jwks;
        let key = match alg {
            // Only the configured secret verifies HS256, whatever the kid says.
            SigningAlg::HS256 => inner.hs256.as_ref().ok_or(AuthError::AlgorithmNotAllowed)?,
            _ => {
                from_jwks = self
                    .key_for(alg, compact.header.kid.as_deref(), now)
                    .await?;
                &from_jwks.key
            }
        };
        // Only the one canonical (low-s) form of an ECDSA signature is accepted.
        if !inner.accept_high_s && !token::ecdsa_s_is_low(alg, compact.signature) {
            return Err(AuthError::SignatureInvalid);
        }
        let valid = jsonwebtoken::crypto::verify(
            compact.signature,
            compact.signing_input.as_bytes(),
            key,
            alg.jsonwebtoken(),
        );
        if !matches!(valid, Ok(true)) {
            return Err(AuthError::SignatureInvalid);
        }

        let claims = Claims::decode(compact.payload)?;
        let expires_at = claims.check_time(now, inner.leeway)?;
        if claims.iss.as_deref() != Some(inner.issuer.as_str()) {
            return Err(AuthError::IssuerInvalid);
        }
        if !claims
            .aud
            .as_ref()
            .is_some_and(|aud| aud.contains(&inner.audience))
        {
            return Err(AuthError::AudienceInvalid);
        }
        let subject = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::TokenMalformed)?;
        let fhir_user = match claims.fhir_user {
            None => return Err(AuthError::FhirUserMissing),
            Some(serde_json::Value::String(claim)) => {
                normalize_fhir_user(&claim, &inner.fhir_base).ok_or(AuthError::FhirUserInvalid)?
            }
            Some(_) => return Err(AuthError::FhirUserInvalid),
        };
        Ok(Identity {
            fhir_user,
            subject,
            jti: claims.jti,
            expires_at,
        })
    }

    /// Fetch the JWKS now; returns how many usable keys it holds. Call at start-up so a wrong
    /// address is found early; verification also fetches when it needs to.
    pub async fn refresh_keys(&self) -> Result<usize, AuthError> {
        let mut state = self.inner.fetch.lock().await;
        let keys = self.fetch_keys(&mut state).await?;
        let count = keys.len();
        self.store(keys, chrono::Utc::now().timestamp());
        Ok(count)
    }

    /// How many JWKS requests were made (successful or not), for the metrics.
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    fn cache(&self) -> Arc<Cache> {
        // Poisoning cannot leave the cache half-written: it is only ever swapped whole.
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store(&self, keys: KeySet, now: i64) {
        let cache = Arc::new(Cache {
            keys,
            fetched_at: Some(now),
        });
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = cache;
    }

    /// The key for a token, refetching the JWKS when the kid is unknown or the keys are old,
    /// at most once per `jwks_refresh_min_interval`.
    async fn key_for(
        &self,
        alg: SigningAlg,
        kid: Option<&str>,
        now: i64,
    ) -> Result<Arc<PublicKey>, AuthError> {
        let cache = self.cache();
        if let Some(decided) = cache.decide(&cache.keys.lookup(alg, kid), now) {
            return decided;
        }

        let mut state = self.inner.fetch.lock().await;
        // Whoever held the lock before us may just have fetched what we need.
        let cache = self.cache();
        let before = cache.keys.lookup(alg, kid);
        if let Some(decided) = cache.decide(&before, now) {
            return decided;
        }
        let rate_limited = state
            .last_token_fetch
            .is_some_and(|at| now.abs_diff(at) < self.inner.refresh_min_interval);
        if rate_limited {
            return match before {
                // Old keys are still better than refusing everyone.
                Lookup::Found(key) => Ok(key),
                _ if cache.fetched_at.is_none() => Err(AuthError::JwksUnavailable),
                _ => Err(AuthError::UnknownKey),
            };
        }

        state.last_token_fetch = Some(now);
        match self.fetch_keys(&mut state).await {
            Ok(keys) => self.store(keys, now),
            Err(e) => {
                return match before {
                    Lookup::Found(key) => Ok(key),
                    _ => Err(e),
                };
            }
        }
        match self.cache().keys.lookup(alg, kid) {
            Lookup::Found(key) => Ok(key),
            Lookup::WrongAlg => Err(AuthError::AlgorithmNotAllowed),
            Lookup::NotFound | Lookup::Ambiguous => Err(AuthError::UnknownKey),
        }
    }

    /// One JWKS fetch (after discovery, the first time). The caller holds the fetch lock.
    async fn fetch_keys(&self, state: &mut FetchState) -> Result<KeySet, AuthError> {
        let inner = &self.inner;
        let url = match (&inner.source, &state.jwks_url) {
            (KeySource::Jwks(url), _) | (KeySource::Discovery(_), Some(url)) => url.clone(),
            (KeySource::Discovery(discovery), None) => {
                let url = jwks::get_document(&inner.http, discovery)
                    .await
                    .and_then(|doc| jwks::jwks_uri_from_discovery(&doc, &inner.issuer, discovery))
                    .map_err(|reason| {
                        tracing::warn!(url = %discovery, %reason, "identity: OIDC discovery failed");
                        AuthError::JwksUnavailable
                    })?;
                state.jwks_url = Some(url.clone());
                url
            }
        };
        inner.fetches.fetch_add(1, Ordering::Relaxed);
        let keys = jwks::get_document(&inner.http, &url)
            .await
            .and_then(|doc| KeySet::parse(&doc))
            .map_err(|reason| {
                tracing::warn!(%url, %reason, "identity: JWKS fetch failed");
                AuthError::JwksUnavailable
            })?;
        tracing::info!(%url, keys = keys.len(), "identity: JWKS loaded");
        Ok(keys)
    }
}

fn parse_url(field: &'static str, url: &str) -> Result<Url, ConfigError> {
    let parsed = Url::parse(url).map_err(|e| ConfigError::BadUrl {
        field,
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::BadUrl {
            field,
            reason: "must be an http(s) URL".into(),
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
