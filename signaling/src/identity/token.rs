//! The compact JWS form of a token and its claims, parsed by hand rather than by `jsonwebtoken`:
//! we need the raw `alg` string to refuse `none` with the right code, time checks against the
//! `now` we are given, and exact error codes for each claim.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer};

use super::AuthError;

/// Tokens longer than this are refused before any decoding. Identity-provider tokens are a
/// few kilobytes; the limit keeps a hostile client from making us decode megabytes.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token split into its three parts; nothing is verified yet.
#[derive(Debug)]
pub(super) struct Compact<'a> {
    pub header: Header,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
}

/// The JOSE header fields we act on. Others (`typ`, and notably `jwk`, `jku`, `x5u`, `x5c`,
/// which would let the token name its own key) are ignored: keys come only from our JWKS.
#[derive(Debug, Deserialize)]
pub(super) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the recipient must understand. We understand none.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl<'a> Compact<'a> {
    pub fn parse(token: &'a str) -> Result<Self, AuthError> {
        if token.is_empty() {
            return Err(AuthError::TokenMissing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TokenMalformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::TokenMalformed);
        };
        let header: Header = json_object(&b64(header)?)?;
        if header.crit.is_some() {
            return Err(AuthError::TokenMalformed);
        }
        let signing_input = &token[..token.len() - signature.len() - 1];
        Ok(Compact {
            header,
            signing_input,
            payload,
            signature,
        })
    }
}

/// The claims we read; unknown claims are ignored. Duplicate claims make serde fail, so a token
/// cannot say one thing to us and another to a different parser.
#[derive(Debug, Deserialize)]
pub(super) struct Claims {
    pub iss: Option<String>,
    pub aud: Option<Audience>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub nbf: Option<i64>,
    /// Kept as a value: a non-string `fhirUser` is an invalid one, not a malformed token.
    #[serde(rename = "fhirUser")]
    pub fhir_user: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

impl Claims {
    /// Decode the payload. Call only once the signature is verified.
    pub fn decode(payload: &str) -> Result<Self, AuthError> {
        json_object(&b64(payload)?)
    }

    /// `exp` is required; `nbf` is checked when present. `leeway` absorbs clock skew between us
    /// and the identity provider in both directions.
    pub fn check_time(&self, now: i64, leeway: i64) -> Result<i64, AuthError> {
        // A token that never expires is not one we accept; there is no better code than this.
        let exp = self.exp.ok_or(AuthError::TokenMalformed)?;
        // RFC 7519 §4.1.4: the token is valid only *before* exp.
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::TokenExpired);
        }
        if let Some(nbf) = self.nbf
            && now.saturating_add(leeway) < nbf
        {
            return Err(AuthError::TokenNotYetValid);
        }
        Ok(exp)
    }
}

/// Whether an ES256 or ES384 signature (JOSE form: `r || s`, base64url) has a low `s`
/// (s <= n/2). For every valid ECDSA signature (r, s), (r, n - s) is valid too, so without
/// this rule anyone can mint a second, different token from one they saw: a token that is not
/// byte-for-byte the one the provider issued (what a denylist or a replay cache of raw
/// tokens would look for). Providers that sign with low `s` lose nothing; others are refused
/// as `signature_invalid`. `false` also for what is not such a signature at all.
pub(super) fn ecdsa_s_is_low(alg: super::SigningAlg, signature: &str) -> bool {
    let Ok(bytes) = b64(signature) else {
        return false;
    };
    match alg {
        super::SigningAlg::ES256 => {
            p256::ecdsa::Signature::from_slice(&bytes).is_ok_and(|sig| sig.normalize_s().is_none())
        }
        super::SigningAlg::ES384 => {
            p384::ecdsa::Signature::from_slice(&bytes).is_ok_and(|sig| sig.normalize_s().is_none())
        }
        _ => true,
    }
}

/// `token` (a compact JWS signed with ES256 or ES384) with its signature in low-s form: what
/// an issuer that does not normalize its signatures must do before we accept its tokens (the
/// dev issuer does; test doubles and the load tool can). Other tokens are returned as given.
pub fn with_low_s(token: &str) -> String {
    let Some((input, signature)) = token.rsplit_once('.') else {
        return token.to_owned();
    };
    let Ok(bytes) = b64(signature) else {
        return token.to_owned();
    };
    let normalized = match bytes.len() {
        64 => p256::ecdsa::Signature::from_slice(&bytes)
            .ok()
            .and_then(|s| s.normalize_s())
            .map(|s| s.to_bytes().to_vec()),
        96 => p384::ecdsa::Signature::from_slice(&bytes)
            .ok()
            .and_then(|s| s.normalize_s())
            .map(|s| s.to_bytes().to_vec()),
        _ => None,
    };
    match normalized {
        Some(low) => format!("{input}.{}", URL_SAFE_NO_PAD.encode(low)),
        None => token.to_owned(),
    }
}

fn b64(part: &str) -> Result<Vec<u8>, AuthError> {
    // The strict engine refuses padding and non-canonical trailing bits, so each token has one
    // encoding and a "tampered but equivalent" variant cannot exist.
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::TokenMalformed)
}

/// Deserialize a JSON object. serde's derived structs also accept arrays (fields by position),
/// which JOSE does not allow, so the object shape is checked first.
fn json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, AuthError> {
    let first = json
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(AuthError::TokenMalformed);
    }
    serde_json::from_slice(json).map_err(|_| AuthError::TokenMalformed)
}

/// RFC 7519 NumericDate: seconds since the epoch, integer or not.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.trunc() as i64)),
        _ => Err(serde::de::Error::custom("NumericDate out of range")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn claims(json: &str) -> Result<Claims, AuthError> {
        Claims::decode(&enc(json))
    }

    #[test]
    fn a_token_has_exactly_three_parts() {
        let h = enc(r#"{"alg":"RS256","kid":"k1"}"#);
        let token = format!("{h}.e30.c2ln");
        let ok = Compact::parse(&token).unwrap();
        assert_eq!(ok.header.alg, "RS256");
        assert_eq!(ok.header.kid.as_deref(), Some("k1"));
        assert_eq!(ok.signing_input, format!("{h}.e30"));
        assert_eq!(ok.signature, "c2ln");

        assert!(matches!(Compact::parse(""), Err(AuthError::TokenMissing)));
        for bad in [
            format!("{h}.e30"),
            format!("{h}.e30.c2ln.x"),
            "a.b.c".into(),
            "...".into(),
        ] {
            assert!(
                matches!(Compact::parse(&bad), Err(AuthError::TokenMalformed)),
                "{bad}"
            );
        }
        let huge = format!("{h}.{}.c2ln", "A".repeat(MAX_TOKEN_LEN));
        assert!(matches!(
            Compact::parse(&huge),
            Err(AuthError::TokenMalformed)
        ));
    }

    #[test]
    fn headers_must_be_strict_json_without_crit() {
        for header in [
            r#"{"kid":"k1"}"#,
            r#"{"alg":256}"#,
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
            r#"["RS256"]"#,
        ] {
            let token = format!("{}.e30.c2ln", enc(header));
            assert!(
                matches!(Compact::parse(&token), Err(AuthError::TokenMalformed)),
                "{header}"
            );
        }
        // Padded base64 is not the JWS encoding.
        let padded = format!("{}=.e30.c2ln", enc(r#"{"alg":"RS256"}"#));
        assert!(matches!(
            Compact::parse(&padded),
            Err(AuthError::TokenMalformed)
        ));
    }

    #[test]
    fn claims_parse_strictly() {
        let c = claims(r#"{"iss":"i","aud":["a","b"],"sub":"s","exp":10.7,"nbf":5,"fhirUser":7}"#)
            .unwrap();
        assert_eq!(c.exp, Some(10));
        assert_eq!(c.nbf, Some(5));
        assert!(
            c.aud
                .as_ref()
                .is_some_and(|a| a.contains("b") && !a.contains("c"))
        );
        assert_eq!(c.fhir_user, Some(serde_json::json!(7)));

        for bad in [
            r#"{"exp":"10"}"#,
            r#"{"exp":1e300}"#,
            r#"{"exp":18446744073709551615}"#,
            r#"{"iss":["i"]}"#,
            r#"{"aud":7}"#,
            r#"{"sub":"a","sub":"b"}"#,
            r#"[]"#,
            r#"["i", "a", "s", "j", 10, 5, "Patient/1"]"#,
        ] {
            assert!(
                matches!(claims(bad), Err(AuthError::TokenMalformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn time_checks_use_the_given_clock_and_leeway() {
        let c = claims(r#"{"exp":100,"nbf":50}"#).unwrap();
        assert_eq!(c.check_time(99, 0).unwrap(), 100);
        assert!(matches!(c.check_time(100, 0), Err(AuthError::TokenExpired)));
        assert!(c.check_time(109, 10).is_ok());
        assert!(matches!(
            c.check_time(110, 10),
            Err(AuthError::TokenExpired)
        ));
        assert!(matches!(
            c.check_time(49, 0),
            Err(AuthError::TokenNotYetValid)
        ));
        assert!(c.check_time(40, 10).is_ok());
        assert!(matches!(
            c.check_time(39, 10),
            Err(AuthError::TokenNotYetValid)
        ));

        let no_exp = claims(r#"{"nbf":50}"#).unwrap();
        assert!(matches!(
            no_exp.check_time(60, 0),
            Err(AuthError::TokenMalformed)
        ));
        let far = claims(r#"{"exp":9223372036854775807}"#).unwrap();
        assert!(far.check_time(0, 60).is_ok());
    }
}
