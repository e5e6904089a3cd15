//! How every MetaClinic process reads its configuration: defaults, then a TOML file, then
//! the environment; the same loader and the same errors for the SFU and signaling.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        // figment names the key path and the source (file or environment variable).
        ConfigError::Parse(e.to_string())
    }
}

/// Every process kind's configuration, the same way: its defaults, then the TOML file (if
/// any; unknown keys refused by the tree's `deny_unknown_fields`), then environment
/// variables named `{env_prefix}SECTION__KEY`.
pub fn layered<T: Serialize + DeserializeOwned + Default>(
    path: Option<&Path>,
    env_prefix: &str,
) -> Result<T, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(p) = path {
        if !p.exists() {
            return Err(ConfigError::Parse(format!(
                "config file {} does not exist",
                p.display()
            )));
        }
        fig = fig.merge(Toml::file_exact(p));
    }
    Ok(fig.merge(Env::prefixed(env_prefix).split("__")).extract()?)
}

/// Defaults, then TOML text (no environment): for tests and tools.
pub fn from_toml_text<T: Serialize + DeserializeOwned + Default>(
    text: &str,
) -> Result<T, ConfigError> {
    Ok(Figment::from(Serialized::defaults(T::default()))
        .merge(Toml::string(text))
        .extract()?)
}
