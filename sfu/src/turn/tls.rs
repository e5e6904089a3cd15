//! The TLS certificate and key for `turns:`, from PEM files, re-read when either changes
//! (cert-manager renews a mounted Secret in place). New connections get the new pair;
//! open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files' modification times are looked at.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Arc<ServerConfig>, Option<SystemTime>)>,
}

fn modified(paths: [&Path; 2]) -> Option<SystemTime> {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
}

/// A server configuration from the PEM files.
pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("turn.tls_cert_path {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("turn.tls_cert_path {}: no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| anyhow::anyhow!("turn.tls_key_path {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("turn TLS certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

impl Certificates {
    pub fn new(cert_path: &Path, key_path: &Path) -> anyhow::Result<Certificates> {
        let config = load(cert_path, key_path)?;
        Ok(Certificates {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new((config, modified([cert_path, key_path]))),
        })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Re-read the files if they changed since the last read. A pair that does not load
    /// (a renewal caught half-written) leaves the old one in use; it is tried again at the
    /// next change.
    pub fn reload_if_changed(&self) {
        let now = modified([&self.cert_path, &self.key_path]);
        let last = self.current.read().unwrap_or_else(|p| p.into_inner()).1;
        if now.is_none() || now == last {
            return;
        }
        match load(&self.cert_path, &self.key_path) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (config, now);
                tracing::info!("TURN TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!("TURN TLS certificate changed but does not load: {e}");
                self.current.write().unwrap_or_else(|p| p.into_inner()).1 = now;
            }
        }
    }
}
