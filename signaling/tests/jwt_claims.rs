//! A JWT's claims and keys as the identity verifier checks them: expiry and not-before
//! with leeway, audience, issuer, the `fhirUser` claim, and the JWKS (refetched for unknown
//! `kid`s at most once per interval, rotation, the endpoint down). Real keys and a real JWKS
//! over HTTP (see `jwt/mod.rs`).

mod jwt;

use std::time::Duration;

use metaclinic_signaling::identity::AuthError;
use serde_json::{Value, json};

use jwt::*;

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
