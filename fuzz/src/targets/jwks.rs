//! The identity provider's documents: its JWK Set (`KeySet::parse`, then the key choice every
//! token makes, `KeySet::lookup`) and its OIDC discovery document (`jwks_uri_from_discovery`).
//!
//! Both live in signaling's private `identity::jwks` module, reached in the product only
//! through an HTTP fetch. Rather than widen signaling's API, this crate compiles that very
//! file by path (as the comment in `identity/mod.rs` says tests once did): the code fuzzed is
//! the product's source, with the product's dependencies.

use metaclinic_signaling::identity::SigningAlg;

#[allow(dead_code, clippy::all)]
#[path = "../../../signaling/src/identity/jwks.rs"]
mod jwks;

use jwks::{KeySet, Lookup};

use super::{Target, outcome};
use crate::mutate::Grammar;

const ISSUER: &str = "https://idp.example";

const DICT: &[&[u8]] = &[
    b"keys",
    b"kty",
    b"RSA",
    b"EC",
    b"oct",
    b"OKP",
    b"kid",
    b"use",
    b"sig",
    b"enc",
    b"key_ops",
    b"verify",
    b"sign",
    b"alg",
    b"RS256",
    b"RS384",
    b"ES256",
    b"ES384",
    b"HS256",
    b"none",
    b"n",
    b"e",
    b"AQAB",
    b"AAEAAQ",
    b"crv",
    b"P-256",
    b"P-384",
    b"P-521",
    b"x",
    b"y",
    b"d",
    b"k",
    b"x5c",
    b"issuer",
    b"jwks_uri",
    b"https://idp.example",
    b"https://idp.example/jwks",
    b"http://idp.example/jwks",
    b"file:///etc/passwd",
    b"javascript:alert(1)",
    b"https://[::1]:443/jwks",
    b"https://idp.example:99999/",
];

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn seeds() -> Vec<Vec<u8>> {
    // An EC key from a fixed scalar, and an RSA-sized modulus (its primality is nobody's
    // business here: the parser checks the size and the exponent only).
    let secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("a valid P-256 scalar");
    let p256_jwk: serde_json::Value =
        serde_json::from_str(&secret.public_key().to_jwk_string()).expect("a JWK");
    let secret384 = p384::SecretKey::from_slice(&[9u8; 48]).expect("a valid P-384 scalar");
    let p384_jwk: serde_json::Value =
        serde_json::from_str(&secret384.public_key().to_jwk_string()).expect("a JWK");
    let mut modulus = vec![0xc3u8; 256];
    modulus[255] |= 1;
    let with = |mut jwk: serde_json::Value, extra: serde_json::Value| {
        for (k, v) in extra.as_object().expect("an object") {
            jwk[k] = v.clone();
        }
        jwk
    };
    let rsa = serde_json::json!({"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": b64(&modulus), "e": "AQAB"});
    let ec = with(
        p256_jwk,
        serde_json::json!({"kid": "ec-1", "alg": "ES256", "key_ops": ["verify"]}),
    );
    let ec384 = with(p384_jwk, serde_json::json!({"kid": "ec-384"}));
    let doc =
        |keys: Vec<serde_json::Value>| serde_json::json!({ "keys": keys }).to_string().into_bytes();
    vec![
        doc(vec![rsa.clone(), ec.clone(), ec384.clone()]),
        doc(vec![ec.clone()]),
        doc(vec![rsa.clone(), rsa.clone()]),
        doc(vec![
            serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            ec384,
        ]),
        doc(vec![]),
    ]
}

pub fn jwks() -> Target {
    Target {
        name: "jwks",
        entry: "signaling identity::jwks::KeySet::parse and KeySet::lookup",
        grammar: Grammar::Json,
        max_len: 64 * 1024,
        dict: DICT,
        seeds,
        build: || {
            Box::new(|data: &[u8]| {
                let Ok(keys) = KeySet::parse(data) else {
                    return outcome(&["not a JWK Set"]);
                };
                let document: serde_json::Value =
                    serde_json::from_slice(data).expect("invariant: a key set from no JSON");
                let entries = document["keys"].as_array().map_or(0, Vec::len);
                assert!(keys.len() <= entries, "invariant: more keys than entries");
                let mut kids: Vec<Option<&str>> = document["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(8)
                    .map(|k| k.get("kid").and_then(|k| k.as_str()))
                    .collect();
                kids.extend([None, Some("nope")]);
                let mut found = 0;
                for alg in [
                    SigningAlg::RS256,
                    SigningAlg::RS384,
                    SigningAlg::ES256,
                    SigningAlg::ES384,
                    SigningAlg::HS256,
                ] {
                    for kid in &kids {
                        if let Lookup::Found(key) = keys.lookup(alg, *kid) {
                            assert!(
                                key.supports(alg),
                                "invariant: a key chosen for {alg:?} it cannot verify"
                            );
                            assert_ne!(
                                alg,
                                SigningAlg::HS256,
                                "invariant: a published key as an HMAC secret"
                            );
                            if let Some(kid) = kid {
                                assert_eq!(key.kid.as_deref(), Some(*kid));
                            }
                            found += 1;
                        }
                    }
                }
                outcome(&[
                    "ok",
                    &"k".repeat(keys.len().min(4)),
                    &"f".repeat(found.min(8)),
                ])
            })
        },
    }
}

pub fn discovery() -> Target {
    Target {
        name: "oidc-discovery",
        entry: "signaling identity::jwks::jwks_uri_from_discovery",
        grammar: Grammar::Json,
        max_len: 64 * 1024,
        dict: DICT,
        seeds: || {
            vec![
                br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/protocol/openid-connect/certs","authorization_endpoint":"https://idp.example/auth","id_token_signing_alg_values_supported":["RS256","ES256"]}"#.to_vec(),
                br#"{"issuer":"https://idp.example","jwks_uri":"http://idp.example/certs"}"#.to_vec(),
                br#"{"issuer":"https://evil.example","jwks_uri":"https://evil.example/certs"}"#.to_vec(),
            ]
        },
        build: || {
            let url = reqwest::Url::parse("https://idp.example/.well-known/openid-configuration")
                .expect("a URL");
            Box::new(
                move |data: &[u8]| match jwks::jwks_uri_from_discovery(data, ISSUER, &url) {
                    Ok(jwks_uri) => {
                        assert_eq!(
                            jwks_uri.scheme(),
                            "https",
                            "invariant: a JWKS address downgraded from https"
                        );
                        outcome(&["ok"])
                    }
                    Err(e) => outcome(&[e.split(':').next().unwrap_or("")]),
                },
            )
        },
    }
}
