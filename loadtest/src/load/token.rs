//! Where participants' tokens come from: the dev issuer of a `metaclinic dev` target, or
//! tokens signed here with a key the identity provider trusts (for a real deployment, whose
//! operator registers the load tool's public key for a test realm).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Signs participants' tokens with a private key given on the command line.
pub struct TokenSigner {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    #[serde(rename = "fhirUser")]
    fhir_user: &'a str,
}

impl TokenSigner {
    /// `alg` is one of ES256, ES384, RS256, RS384; `pem` a PKCS#8 (or PKCS#1 RSA) private key.
    pub fn from_pem_file(
        path: &Path,
        alg: &str,
        kid: Option<&str>,
        issuer: &str,
        audience: &str,
    ) -> anyhow::Result<TokenSigner> {
        let pem = std::fs::read(path)
            .with_context(|| format!("--token-key: cannot read {}", path.display()))?;
        let (algorithm, key) = match alg {
            "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)),
            "ES384" => (Algorithm::ES384, EncodingKey::from_ec_pem(&pem)),
            "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
            "RS384" => (Algorithm::RS384, EncodingKey::from_rsa_pem(&pem)),
            other => anyhow::bail!("--token-alg: {other} is not one of ES256, ES384, RS256, RS384"),
        };
        let key = key.with_context(|| format!("--token-key: not a {alg} private key"))?;
        anyhow::ensure!(
            !issuer.is_empty(),
            "--token-issuer is needed with --token-key"
        );
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        Ok(TokenSigner {
            key,
            header,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// A token for `fhir_user` (a relative reference such as `Patient/lt-pat-3`), valid for
    /// `minutes`.
    pub fn token(&self, fhir_user: &str, minutes: u64) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: fhir_user,
            iat: now,
            nbf: now.saturating_sub(5),
            exp: now + minutes * 60,
            jti: format!("lt-{:016x}", rand::random::<u64>()),
            fhir_user,
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)?;
        // Signaling refuses high-S ECDSA signatures (malleable); ours are normalized.
        Ok(metaclinic_signaling::identity::with_low_s(&token))
    }
}

/// Tokens for the run's identities.
pub enum Tokens {
    /// `POST /dev/token` of the target (dev mode issues a token for any identity).
    DevIssuer {
        base: String,
    },
    Signed(Box<TokenSigner>),
}

impl Tokens {
    pub async fn token(&self, fhir_user: &str, minutes: u64) -> anyhow::Result<String> {
        match self {
            Tokens::DevIssuer { base } => crate::join::dev_token(base, fhir_user).await,
            Tokens::Signed(s) => s.token(fhir_user, minutes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};

    #[test]
    fn a_signed_token_carries_the_identity_and_verifies_with_the_public_key() {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let dir = std::env::temp_dir().join(format!("lt-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        std::fs::write(&path, secret.to_pkcs8_pem(Default::default()).unwrap()).unwrap();
        let signer = TokenSigner::from_pem_file(
            &path,
            "ES256",
            Some("k1"),
            "https://idp.test",
            "metaclinic",
        )
        .unwrap();
        let token = signer.token("Patient/lt-pat-1", 10).unwrap();
        let public = secret
            .public_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["metaclinic"]);
        v.set_issuer(&["https://idp.test"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["fhirUser"], "Patient/lt-pat-1");
        assert_eq!(data.header.kid.as_deref(), Some("k1"));
        assert!(TokenSigner::from_pem_file(&path, "HS256", None, "i", "a").is_err());
        assert!(TokenSigner::from_pem_file(&path, "RS256", None, "i", "a").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
