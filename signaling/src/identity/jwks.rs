//! The identity provider's public keys: fetching the JWK Set (directly or through OIDC
//! discovery), keeping the usable keys, and choosing the one a token names.
//!
//! Only asymmetric signing keys are kept. A symmetric (`oct`) key in a public JWKS would be a
//! secret published to the world, and treating a published key as an HMAC secret is exactly the
//! algorithm-confusion attack, so such keys never become verification keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use reqwest::Url;
use serde::Deserialize;
use std::sync::Arc;

use super::SigningAlg;

/// Bound on a JWKS or discovery document. Real ones are a few kilobytes; the cap keeps a
/// misbehaving endpoint from filling our memory.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// RSA keys shorter than this are refused (NIST SP 800-131A); the verifier's RSA code refuses
/// moduli above 4096 bits, so those would fail every verification: drop them early instead.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
}

/// One verification key from the JWKS.
#[derive(Debug)]
pub(super) struct PublicKey {
    pub kid: Option<String>,
    key_type: KeyType,
    /// The JWK's own `alg`, when it declares one: then only that algorithm may use the key.
    alg: Option<SigningAlg>,
    pub key: DecodingKey,
}

impl PublicKey {
    pub fn supports(&self, alg: SigningAlg) -> bool {
        let type_fits = matches!(
            (self.key_type, alg),
            (KeyType::Rsa, SigningAlg::RS256 | SigningAlg::RS384)
                | (KeyType::P256, SigningAlg::ES256)
                | (KeyType::P384, SigningAlg::ES384)
        );
        type_fits && self.alg.is_none_or(|a| a == alg)
    }

    /// Build a key from one JWKS entry; `Err` says why it is skipped.
    fn from_jwk(jwk: &serde_json::Value) -> Result<Self, &'static str> {
        // Derived structs would also take an array, field by field.
        if !jwk.is_object() {
            return Err("not a JWK");
        }
        let raw = RawJwk::deserialize(jwk).map_err(|_| "not a JWK")?;
        if raw.r#use.as_deref().is_some_and(|u| u != "sig") {
            return Err("not a signing key");
        }
        if raw
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
        {
            return Err("not a verification key");
        }
        let alg = match raw.alg.as_deref() {
            None => None,
            Some(name) => Some(
                SigningAlg::from_jose(name)
                    .filter(|a| *a != SigningAlg::HS256)
                    .ok_or("unsupported alg")?,
            ),
        };
        let (key_type, key) = match raw.kty.as_str() {
            "RSA" => {
                let n = b64(raw.n.as_deref())?;
                let e = b64(raw.e.as_deref())?;
                let bits = significant_bits(&n);
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err("RSA modulus size out of range");
                }
                if significant_bits(&e) < 2
                    || significant_bits(&e) > 64
                    || e.last().is_none_or(|b| b & 1 == 0)
                {
                    return Err("bad RSA exponent");
                }
                (KeyType::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            "EC" => {
                let x = b64(raw.x.as_deref())?;
                let y = b64(raw.y.as_deref())?;
                let mut point = vec![0x04];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                // Check the point is on the named curve now, so a broken key is skipped at load
                // rather than failing every token that names it.
                let key_type = match raw.crv.as_deref() {
                    Some("P-256") if x.len() == 32 && y.len() == 32 => {
                        p256::PublicKey::from_sec1_bytes(&point)
                            .map_err(|_| "point not on P-256")?;
                        KeyType::P256
                    }
                    Some("P-384") if x.len() == 48 && y.len() == 48 => {
                        p384::PublicKey::from_sec1_bytes(&point)
                            .map_err(|_| "point not on P-384")?;
                        KeyType::P384
                    }
                    _ => return Err("unsupported curve or coordinate size"),
                };
                // jsonwebtoken keeps EC public keys as the SEC1 point, whatever the name says.
                (key_type, DecodingKey::from_ec_der(&point))
            }
            _ => return Err("unsupported key type"),
        };
        let key = PublicKey {
            kid: raw.kid,
            key_type,
            alg,
            key,
        };
        if let Some(alg) = key.alg
            && !key.supports(alg)
        {
            return Err("alg does not fit the key type");
        }
        Ok(key)
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    r#use: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(field: Option<&str>) -> Result<Vec<u8>, &'static str> {
    let field = field.ok_or("missing key parameter")?;
    // Some providers pad; the JWK is from a trusted source, so tolerate it.
    URL_SAFE_NO_PAD
        .decode(field.trim_end_matches('='))
        .map_err(|_| "bad base64url")
}

fn significant_bits(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
    }
}

/// What a token's header finds in the key set.
#[derive(Debug)]
pub(super) enum Lookup {
    Found(Arc<PublicKey>),
    /// The kid exists but its key cannot be used with the token's `alg`.
    WrongAlg,
    /// No key has that kid (or, without kid, no key of the right type): maybe a rotation.
    NotFound,
    /// No kid, and several keys would fit: we do not try them in turn.
    Ambiguous,
}

#[derive(Debug, Default)]
pub(super) struct KeySet {
    keys: Vec<Arc<PublicKey>>,
}

impl KeySet {
    /// Parse a JWK Set document, skipping the entries we cannot or must not use.
    pub fn parse(document: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document =
            serde_json::from_slice(document).map_err(|e| format!("not a JWK Set: {e}"))?;
        let mut keys: Vec<Arc<PublicKey>> = Vec::new();
        for jwk in &doc.keys {
            match PublicKey::from_jwk(jwk) {
                Ok(key) if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) => {
                    tracing::warn!(kid = ?key.kid, "duplicate kid in JWKS; keeping the first");
                }
                Ok(key) => keys.push(Arc::new(key)),
                Err(why) => {
                    let kid = jwk.get("kid").and_then(|k| k.as_str());
                    tracing::debug!(?kid, why, "JWKS entry skipped");
                }
            }
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Choose the key for a token. Without a kid, only an unambiguous choice is made: the set
    /// must hold exactly one key usable with `alg`.
    pub fn lookup(&self, alg: SigningAlg, kid: Option<&str>) -> Lookup {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(key) if key.supports(alg) => Lookup::Found(key.clone()),
                Some(_) => Lookup::WrongAlg,
                None => Lookup::NotFound,
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.supports(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key.clone()),
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                    (None, _) => Lookup::NotFound,
                }
            }
        }
    }
}

/// GET a JSON document, refusing redirects' targets, errors and oversized bodies.
pub(super) async fn get_document(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err("document too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading body: {e}"))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err("document too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Find the JWKS address in an OIDC discovery document.
///
/// OpenID Connect Discovery §4.3: the document's `issuer` must be the issuer we expect,
/// otherwise one provider could hand us another's keys.
pub(super) fn jwks_uri_from_discovery(
    document: &[u8],
    issuer: &str,
    discovery_url: &Url,
) -> Result<Url, String> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let doc: Discovery =
        serde_json::from_slice(document).map_err(|e| format!("not a discovery document: {e}"))?;
    if doc.issuer != issuer {
        return Err(format!("discovery document is for issuer {:?}", doc.issuer));
    }
    let url = Url::parse(&doc.jwks_uri).map_err(|e| format!("bad jwks_uri: {e}"))?;
    let downgraded = discovery_url.scheme() == "https" && url.scheme() != "https";
    if downgraded || !matches!(url.scheme(), "http" | "https") {
        return Err(format!("jwks_uri scheme {:?} refused", url.scheme()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64u(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A syntactically fine 2048-bit modulus: the load-time checks do not factor it.
    fn rsa_jwk(kid: &str) -> serde_json::Value {
        let mut n = vec![0xc5; 256];
        n[255] = 0x01;
        json!({"kty": "RSA", "kid": kid, "n": b64u(&n), "e": "AQAB"})
    }

    fn p256_jwk(kid: &str) -> serde_json::Value {
        // The P-256 generator point.
        let x = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
        let y = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": x, "y": y})
    }

    fn set(keys: Vec<serde_json::Value>) -> KeySet {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn usable_keys_are_kept_and_chosen_by_kid() {
        let keys = set(vec![rsa_jwk("r1"), p256_jwk("e1")]);
        assert_eq!(keys.len(), 2);
        assert!(matches!(
            keys.lookup(SigningAlg::RS256, Some("r1")),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::RS384, Some("r1")),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::ES256, Some("e1")),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::ES256, Some("r1")),
            Lookup::WrongAlg
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::HS256, Some("r1")),
            Lookup::WrongAlg
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::ES384, Some("e1")),
            Lookup::WrongAlg
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::RS256, Some("nope")),
            Lookup::NotFound
        ));
    }

    #[test]
    fn without_kid_only_a_single_fitting_key_is_chosen() {
        let keys = set(vec![rsa_jwk("r1"), p256_jwk("e1")]);
        assert!(
            matches!(keys.lookup(SigningAlg::RS256, None), Lookup::Found(k) if k.kid.as_deref() == Some("r1"))
        );
        assert!(matches!(
            keys.lookup(SigningAlg::ES384, None),
            Lookup::NotFound
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::HS256, None),
            Lookup::NotFound
        ));
        let two = set(vec![rsa_jwk("r1"), rsa_jwk("r2")]);
        assert!(matches!(
            two.lookup(SigningAlg::RS256, None),
            Lookup::Ambiguous
        ));
    }

    #[test]
    fn a_declared_alg_restricts_the_key() {
        let mut jwk = rsa_jwk("r1");
        jwk["alg"] = json!("RS384");
        let keys = set(vec![jwk]);
        assert!(matches!(
            keys.lookup(SigningAlg::RS384, Some("r1")),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.lookup(SigningAlg::RS256, Some("r1")),
            Lookup::WrongAlg
        ));
    }

    #[test]
    fn unusable_entries_are_skipped() {
        let with = |mut jwk: serde_json::Value, field: &str, value: serde_json::Value| {
            jwk[field] = value;
            jwk
        };
        let short_n = json!({"kty": "RSA", "kid": "short", "n": b64u(&[0xc5; 128]), "e": "AQAB"});
        let keys = set(vec![
            json!({"kty": "oct", "kid": "secret", "k": "c2VjcmV0"}),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            short_n,
            with(rsa_jwk("even-e"), "e", json!("AQAA")),
            with(rsa_jwk("enc"), "use", json!("enc")),
            with(rsa_jwk("ops"), "key_ops", json!(["encrypt"])),
            with(rsa_jwk("ps"), "alg", json!("PS256")),
            with(rsa_jwk("hs"), "alg", json!("HS256")),
            with(rsa_jwk("mismatch"), "alg", json!("ES256")),
            with(p256_jwk("off-curve"), "y", json!(b64u(&[7; 32]))),
            with(p256_jwk("short-x"), "x", json!(b64u(&[7; 31]))),
            with(p256_jwk("p521"), "crv", json!("P-521")),
            json!({"kty": "RSA", "kid": "no-n", "e": "AQAB"}),
            json!("not an object"),
            json!(["RSA", "arr", null, null, null, b64u(&[0xc5; 256]), "AQAB"]),
        ]);
        assert_eq!(keys.len(), 0);
    }

    #[test]
    fn duplicate_kids_keep_the_first_key() {
        let keys = set(vec![rsa_jwk("k"), p256_jwk("k")]);
        assert_eq!(keys.len(), 1);
        assert!(matches!(
            keys.lookup(SigningAlg::ES256, Some("k")),
            Lookup::WrongAlg
        ));
    }

    #[test]
    fn a_document_without_keys_is_an_error() {
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"<html>").is_err());
        assert_eq!(KeySet::parse(br#"{"keys":[]}"#).unwrap().len(), 0);
    }

    #[test]
    fn discovery_must_name_our_issuer_and_not_downgrade() {
        let https = Url::parse("https://idp.example/.well-known/openid-configuration").unwrap();
        let doc = |iss: &str, jwks: &str| json!({"issuer": iss, "jwks_uri": jwks}).to_string();
        let ok = jwks_uri_from_discovery(
            doc("https://idp.example", "https://idp.example/jwks").as_bytes(),
            "https://idp.example",
            &https,
        );
        assert_eq!(ok.unwrap().as_str(), "https://idp.example/jwks");
        for (iss, jwks) in [
            ("https://evil.example", "https://idp.example/jwks"),
            ("https://idp.example/", "https://idp.example/jwks"),
            ("https://idp.example", "http://idp.example/jwks"),
            ("https://idp.example", "file:///etc/passwd"),
            ("https://idp.example", "not a url"),
        ] {
            let got =
                jwks_uri_from_discovery(doc(iss, jwks).as_bytes(), "https://idp.example", &https);
            assert!(got.is_err(), "{iss} {jwks}");
        }
    }
}
