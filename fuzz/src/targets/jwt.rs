//! Bearer tokens, through `identity::Verifier::verify` as the join does: the JOSE header
//! parsed on its own (`alg`, `kid`, `crit`), the algorithm pinned, the signature, then the
//! claims and `fhirUser`.
//!
//! Each input is tried twice: as a compact token as it stands, and as a JOSE header and a
//! claims set (the input's first line and the rest) that the harness encodes and signs with
//! the verifier's development HS256 secret, so mutated headers and claims get past the
//! signature and reach the code behind it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use metaclinic_signaling::identity::{
    AuthError, IdentityConfig, SigningAlg, Verifier, normalize_fhir_user,
};

use super::{Harness, Target, outcome, text};
use crate::mutate::Grammar;

const SECRET: &str = "fuzz-only-development-secret-0123456789";
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "metaclinic";
const FHIR_BASE: &str = "https://fhir.example/R4";
/// The verifier's clock: tokens in the seeds expire ten minutes after it.
const NOW: i64 = 1_800_000_000;

const DICT: &[&[u8]] = &[
    b"alg",
    b"HS256",
    b"none",
    b"None",
    b"RS256",
    b"ES256",
    b"ES384",
    b"RS384",
    b"HS512",
    b"kid",
    b"crit",
    b"typ",
    b"JWT",
    b"jwk",
    b"jku",
    b"x5u",
    b"b64",
    b"iss",
    b"aud",
    b"sub",
    b"exp",
    b"nbf",
    b"iat",
    b"jti",
    b"fhirUser",
    b"https://idp.example",
    b"metaclinic",
    b"Patient/pat-1042",
    b"Practitioner/dr-1",
    b"https://fhir.example/R4/Practitioner/dr-1",
    b"https://fhir.example/R4/Practitioner/dr-1/",
    b"RelatedPerson/x",
    b"Device/d1",
    b"1800000600",
    b"1799999999",
    b"1e15",
    b"-1",
    b".",
];

fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn seeds() -> Vec<Vec<u8>> {
    let claims = format!(
        r#"{{"iss":"{ISSUER}","aud":["{AUDIENCE}","other"],"sub":"u-17","jti":"j-1","exp":{},"nbf":{},"fhirUser":"Patient/pat-1042"}}"#,
        NOW + 600,
        NOW - 60
    );
    let absolute = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"u-18","exp":{}.5,"fhirUser":"{FHIR_BASE}/Practitioner/dr-1"}}"#,
        NOW + 60
    );
    let pair = |h: &str, c: &str| format!("{h}\n{c}").into_bytes();
    vec![
        pair(r#"{"alg":"HS256","typ":"JWT"}"#, &claims),
        pair(r#"{"alg":"HS256","kid":"dev"}"#, &absolute),
        pair(r#"{"alg":"none"}"#, &claims),
        pair(r#"{"alg":"ES256","kid":"idp-1"}"#, &claims),
        pair(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, &claims),
        pair(r#"{"alg":"HS256","jwk":{"kty":"oct","k":"AAAA"}}"#, &claims),
        // Compact tokens as a client sends them.
        sign(br#"{"alg":"HS256","typ":"JWT"}"#, claims.as_bytes()).into_bytes(),
        format!("{}..", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)).into_bytes(),
    ]
}

pub fn target() -> Target {
    Target {
        name: "jwt",
        entry: "signaling::identity::Verifier::verify (JOSE header, alg pinning, claims, fhirUser)",
        grammar: Grammar::Json,
        max_len: 20 * 1024,
        dict: DICT,
        seeds,
        build: || Box::new(JwtHarness::new()),
    }
}

struct JwtHarness {
    verifier: Verifier,
    runtime: tokio::runtime::Runtime,
}

impl JwtHarness {
    fn new() -> JwtHarness {
        metaclinic_signaling::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let verifier = Verifier::new(IdentityConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            // Nothing listens there: ES256 tokens find no keys (once fetched, then rate-limited).
            jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
            algorithms: vec![SigningAlg::HS256, SigningAlg::ES256],
            fhir_base: FHIR_BASE.into(),
            dev_hs256_secret: Some(SECRET.into()),
            http_timeout: std::time::Duration::from_millis(200),
            ..IdentityConfig::default()
        })
        .expect("the verifier's configuration");
        JwtHarness { verifier, runtime }
    }

    fn verify(&self, token: &str) -> Result<(), AuthError> {
        let identity = self.runtime.block_on(self.verifier.verify(token, NOW))?;
        // Only a token signed with the pinned algorithm, without `crit`, is accepted. The
        // header is read here as the verifier reads it: members it ignores are skipped
        // unchecked (serde does not validate their UTF-8 or `\u` escapes), so a stricter
        // reader would refuse headers the verifier rightly accepts.
        #[derive(serde::Deserialize)]
        struct Jose {
            alg: String,
            #[serde(default)]
            crit: Option<serde_json::Value>,
        }
        let header: Jose = token
            .split('.')
            .next()
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|h| serde_json::from_slice(&h).ok())
            .expect("invariant: a token accepted with an unreadable header");
        assert_eq!(
            header.alg, "HS256",
            "invariant: accepted alg {:?}",
            header.alg
        );
        assert!(
            header.crit.is_none(),
            "invariant: accepted a token with crit"
        );
        assert_eq!(
            normalize_fhir_user(&identity.fhir_user, FHIR_BASE).as_deref(),
            Some(identity.fhir_user.as_str()),
            "invariant: fhirUser not normalised"
        );
        assert!(
            identity.expires_at.saturating_add(60) > NOW,
            "invariant: an expired token accepted"
        );
        assert!(!identity.subject.is_empty());
        Ok(())
    }
}

impl Harness for JwtHarness {
    fn run(&mut self, data: &[u8]) -> u64 {
        let raw = self.verify(&text(data));
        let (header, claims) = match data.iter().position(|b| *b == b'\n') {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (data, &b""[..]),
        };
        let signed = self.verify(&sign(header, claims));
        let code = |r: &Result<(), AuthError>| r.as_ref().err().map_or("ok", AuthError::code);
        outcome(&[code(&raw), code(&signed)])
    }
}
