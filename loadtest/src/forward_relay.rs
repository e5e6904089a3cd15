//! `loadtest forward --relay udp|tcp|tls`: the same rooms with every participant relay-only
//! through the node's embedded TURN server, to set the CPU a relayed packet costs beside a
//! direct one. This sets up the node's TURN server (ports, a throwaway certificate, a shared
//! secret) and each participant's credential.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::local::{free_tcp_addr, free_udp_ports};
use crate::relay::{RelaySpec, RelayTransport};

const SECRET: &str = "loadtest-turn-shared-secret-0123";

pub struct RelaySetup {
    pub transport: RelayTransport,
    server: SocketAddr,
    ca_pem: Vec<u8>,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl RelaySetup {
    /// Free loopback ports, and a CA and certificate for 127.0.0.1 in a temporary directory.
    pub fn new(transport: RelayTransport) -> anyhow::Result<RelaySetup> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!("loadtest-turn-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        let (udp, tcp, tls) = (
            free_udp_ports(1)?,
            free_tcp_addr()?.port(),
            free_tcp_addr()?.port(),
        );
        let port = match transport {
            RelayTransport::Udp => udp,
            RelayTransport::Tcp => tcp,
            RelayTransport::Tls => tls,
        };
        let env = [
            ("SHARED_SECRET", SECRET.to_owned()),
            ("BIND_IP", "127.0.0.1".to_owned()),
            ("UDP_PORT", udp.to_string()),
            ("TCP_PORT", tcp.to_string()),
            ("TLS_PORT", tls.to_string()),
            ("TLS_CERT_PATH", cert_path.display().to_string()),
            ("TLS_KEY_PATH", key_path.display().to_string()),
            // A benchmark room's subscriber receives every publisher through one allocation.
            ("MAX_BANDWIDTH_BPS", "100000000".to_owned()),
            // Every participant connects from 127.0.0.1: lift the per-address limits.
            ("MAX_CONNECTIONS_PER_IP", "100000".to_owned()),
            ("UNAUTHENTICATED_PER_SECOND", "100000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("METACLINIC_SFU__TURN__{k}"), v))
        .collect();
        Ok(RelaySetup {
            transport,
            server: SocketAddr::from(([127, 0, 0, 1], port)),
            ca_pem: ca.pem().into_bytes(),
            env,
            dir,
        })
    }

    /// The node's environment that turns its TURN server on.
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Relay-only through the node, with a credential for `participant` (an hour).
    pub fn spec_for(&self, participant: &str) -> RelaySpec {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (username, password) =
            metaclinic_sfu::turn::credential::issue(SECRET.as_bytes(), participant, now, 3600);
        RelaySpec {
            server: self.server,
            transport: self.transport,
            tls_name: "127.0.0.1".into(),
            tls_ca_pem: Some(self.ca_pem.clone()),
            username,
            password,
        }
    }
}

impl Drop for RelaySetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
