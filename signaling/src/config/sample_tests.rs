//! The sample configurations document every key and are valid.

use super::*;

const SAMPLE: &str = include_str!("../../../config/signaling.toml");
const DEV: &str = include_str!("../../../config/dev.toml");

/// Every leaf key of `table`, as (section path, key).
fn leaves(table: &toml::Table, section: &str, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => {
                let path = if section.is_empty() {
                    key.clone()
                } else {
                    format!("{section}.{key}")
                };
                leaves(t, &path, out);
            }
            _ => out.push((section.to_owned(), key.clone())),
        }
    }
}

#[test]
fn the_sample_config_parses_and_documents_every_key() {
    SignalingConfig::from_toml(SAMPLE).unwrap();
    let defaults = toml::Table::try_from(SignalingConfig::default()).unwrap();
    let sample: toml::Table = toml::from_str(SAMPLE).unwrap();
    let mut keys = Vec::new();
    leaves(&defaults, "", &mut keys);
    assert!(keys.len() > 30, "{keys:?}");
    for (section, key) in keys {
        let present = section
            .split('.')
            .try_fold(&sample, |t, s| t.get(s)?.as_table())
            .and_then(|t| t.get(&key));
        assert!(
            present.is_some(),
            "config/signaling.toml lacks {section}.{key}"
        );
        let documented = SAMPLE
            .lines()
            .skip_while(|l| l.trim() != format!("[{section}]"))
            .take_while(|l| !l.starts_with(&format!("{key} =")))
            .last()
            .is_some_and(|l| l.trim_start().starts_with('#'));
        assert!(
            documented,
            "config/signaling.toml: {section}.{key} has no comment above it"
        );
    }
}

#[test]
fn redis_mode_wants_a_credential_and_no_static_nodes() {
    let mut cfg = SignalingConfig::from_toml(SAMPLE).unwrap();
    cfg.redis.url = "redis://127.0.0.1:6379/0".into();
    let key = |cfg: &SignalingConfig| match cfg.validate() {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("{other:?}"),
    };
    assert_eq!(key(&cfg), "sfu.nodes");
    cfg.sfu.nodes.clear();
    assert_eq!(key(&cfg), "sfu.credential");
    cfg.sfu.credential = "x".repeat(16);
    cfg.validate().unwrap();
    cfg.redis.url = "http://127.0.0.1:6379".into();
    assert_eq!(key(&cfg), "redis.url");
    cfg.redis.url.clear();
    assert_eq!(key(&cfg), "sfu.nodes");
}

#[test]
fn the_dev_sample_is_valid_once_dev_mode_fills_in_its_part() {
    let mut cfg: SignalingConfig = metaclinic_protocol::config::from_toml_text(DEV).unwrap();
    // What `metaclinic dev` sets itself.
    cfg.dev.enabled = true;
    cfg.booking.backend = BookingBackend::Files;
    cfg.sfu.nodes = vec![SfuNode {
        id: "dev".into(),
        url: "http://127.0.0.1:7001".into(),
        credential: "x".repeat(16),
    }];
    cfg.validate().unwrap();
    assert!(
        cfg.http.listen.ip().is_loopback(),
        "dev mode must not listen beyond this machine"
    );
    // Without dev mode the same file is refused: it names no identity provider.
    cfg.dev.enabled = false;
    assert!(matches!(
        cfg.validate(),
        Err(ConfigError::Invalid {
            key: "identity.issuer",
            ..
        })
    ));
}
