//! The classic JWT attacks against the identity verifier, each refused with its code:
//! `alg: none`, HS256 signed with the RSA public key, an algorithm that does not fit the key,
//! a tampered payload, another key under a known `kid`, unknown issuers' discovery documents.
//! Real keys and a real JWKS over HTTP (see `jwt/mod.rs`).

mod jwt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use metaclinic_signaling::identity::{Identity, IdentityConfig, SigningAlg};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::json;

use jwt::*;

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
