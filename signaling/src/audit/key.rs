//! The audit log's secret: the key of its MAC chain and of its checkpoints.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key of the MAC chain (HMAC-SHA256). Never logged: `Debug` shows its length only.
#[derive(Clone)]
pub struct AuditKey(Arc<[u8]>);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey({} bytes)", self.0.len())
    }
}

impl AuditKey {
    /// Fewer secret bytes than HMAC-SHA256's output would weaken it (RFC 2104 §3).
    pub const MIN_LEN: usize = 32;

    pub fn from_bytes(bytes: &[u8]) -> Result<AuditKey, String> {
        if bytes.len() < Self::MIN_LEN {
            return Err(format!(
                "the key has {} bytes; at least {} are needed",
                bytes.len(),
                Self::MIN_LEN
            ));
        }
        Ok(AuditKey(bytes.into()))
    }

    /// The key in a file (a mounted secret): its bytes, trailing whitespace left out, so a
    /// key written by `openssl rand -hex 32 > file` and one with a final newline are the same.
    pub fn from_file(path: &Path) -> Result<AuditKey, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::from_bytes(&bytes[..end]).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A new random key (64 hex characters) written to `path`, readable by this user only.
    /// Fails if the file exists: an existing key is never replaced.
    pub fn create(path: &Path) -> std::io::Result<AuditKey> {
        let secret: [u8; 32] = rand::random();
        let text = hex::encode(secret);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        Ok(AuditKey(text.as_bytes().into()))
    }

    /// Lowercase hex HMAC-SHA256 of the parts, one after the other.
    pub(super) fn mac(&self, parts: &[&[u8]]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_files_without_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let created = AuditKey::create(&path).unwrap();
        let read = AuditKey::from_file(&path).unwrap();
        assert_eq!(created.mac(&[b"x"]), read.mac(&[b"x"]));
        assert!(AuditKey::create(&path).is_err(), "an existing key is kept");
        std::fs::write(&path, "too short\n").unwrap();
        assert!(
            AuditKey::from_file(&path)
                .unwrap_err()
                .contains("at least 32")
        );
        assert!(!format!("{read:?}").contains(&hex::encode(&read.0)));
    }

    #[test]
    fn the_mac_is_hmac_sha256() {
        // RFC 4231, test case 2 (a short key is fine for HMAC itself; we refuse it above).
        let key = AuditKey(b"Jefe".as_slice().into());
        assert_eq!(
            key.mac(&[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
