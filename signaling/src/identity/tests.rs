use super::*;

fn install_tls() {
    // Whichever test gets here first installs it; the others find it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn config() -> IdentityConfig {
    IdentityConfig {
        issuer: "https://idp.example".into(),
        audience: "metaclinic".into(),
        jwks_url: Some("http://127.0.0.1:9/jwks".into()),
        fhir_base: "https://fhir.hospital.example/R4".into(),
        ..IdentityConfig::default()
    }
}

fn refused(cfg: IdentityConfig) -> ConfigError {
    install_tls();
    match Verifier::new(cfg) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e,
    }
}

#[test]
fn codes_are_stable() {
    let all = [
        (AuthError::TokenMissing, "token_missing"),
        (AuthError::TokenMalformed, "token_malformed"),
        (AuthError::AlgorithmNotAllowed, "algorithm_not_allowed"),
        (AuthError::SignatureInvalid, "signature_invalid"),
        (AuthError::TokenExpired, "token_expired"),
        (AuthError::TokenNotYetValid, "token_not_yet_valid"),
        (AuthError::IssuerInvalid, "issuer_invalid"),
        (AuthError::AudienceInvalid, "audience_invalid"),
        (AuthError::UnknownKey, "unknown_key"),
        (AuthError::FhirUserMissing, "fhir_user_missing"),
        (AuthError::FhirUserInvalid, "fhir_user_invalid"),
        (AuthError::JwksUnavailable, "jwks_unavailable"),
    ];
    for (error, code) in all {
        assert_eq!(error.code(), code);
    }
}

#[test]
fn jose_names_are_matched_exactly() {
    assert_eq!(SigningAlg::from_jose("RS256"), Some(SigningAlg::RS256));
    for name in [
        "none", "None", "NONE", "rs256", "RS512", "PS256", "EdDSA", "HS384", "",
    ] {
        assert_eq!(SigningAlg::from_jose(name), None, "{name}");
    }
}

#[test]
fn a_sound_config_is_accepted() {
    install_tls();
    assert!(Verifier::new(config()).is_ok());
    let discovery = IdentityConfig {
        jwks_url: None,
        discovery_url: Some("https://idp.example/.well-known/openid-configuration".into()),
        ..config()
    };
    assert!(Verifier::new(discovery).is_ok());
}

#[test]
fn incomplete_or_unsafe_configs_are_refused() {
    assert!(matches!(
        refused(IdentityConfig {
            issuer: " ".into(),
            ..config()
        }),
        ConfigError::Missing("issuer")
    ));
    assert!(matches!(
        refused(IdentityConfig {
            audience: String::new(),
            ..config()
        }),
        ConfigError::Missing("audience")
    ));
    assert!(matches!(
        refused(IdentityConfig {
            algorithms: vec![],
            ..config()
        }),
        ConfigError::Missing("algorithms")
    ));
    assert!(matches!(
        refused(IdentityConfig {
            jwks_url: None,
            ..config()
        }),
        ConfigError::KeySource
    ));
    let both = IdentityConfig {
        discovery_url: Some("https://idp.example/.well-known/openid-configuration".into()),
        ..config()
    };
    assert!(matches!(refused(both), ConfigError::KeySource));
    let file = IdentityConfig {
        jwks_url: Some("file:///etc/jwks.json".into()),
        ..config()
    };
    assert!(matches!(
        refused(file),
        ConfigError::BadUrl {
            field: "jwks_url",
            ..
        }
    ));
    let base = IdentityConfig {
        fhir_base: "https://fhir.example/R4?x=1".into(),
        ..config()
    };
    assert!(matches!(
        refused(base),
        ConfigError::BadUrl {
            field: "fhir_base",
            ..
        }
    ));
    let timeout = IdentityConfig {
        http_timeout: Duration::ZERO,
        ..config()
    };
    assert!(matches!(refused(timeout), ConfigError::ZeroTimeout));
}

#[test]
fn hs256_needs_a_strong_dev_secret() {
    let hs = || IdentityConfig {
        algorithms: vec![SigningAlg::RS256, SigningAlg::HS256],
        ..config()
    };
    assert!(matches!(refused(hs()), ConfigError::Hs256WithoutSecret));
    let weak = IdentityConfig {
        dev_hs256_secret: Some("short".into()),
        ..hs()
    };
    assert!(matches!(refused(weak), ConfigError::WeakSecret));
    let dev = IdentityConfig {
        dev_hs256_secret: Some("x".repeat(32)),
        ..hs()
    };
    assert!(Verifier::new(dev).unwrap().inner.hs256.is_some());
    // A secret without HS256 in the list enables nothing.
    let unused = IdentityConfig {
        dev_hs256_secret: Some("x".repeat(32)),
        ..config()
    };
    assert!(Verifier::new(unused).unwrap().inner.hs256.is_none());
}

#[test]
fn leeway_is_clamped_and_interval_rounded_up() {
    install_tls();
    let cfg = IdentityConfig {
        leeway: Duration::from_secs(600),
        jwks_refresh_min_interval: Duration::from_millis(1500),
        ..config()
    };
    let verifier = Verifier::new(cfg).unwrap();
    assert_eq!(verifier.inner.leeway, 60);
    assert_eq!(verifier.inner.refresh_min_interval, 2);
}

#[test]
fn verifier_is_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Verifier>();
}
