//! `metaclinic signaling` as its own process on a loopback port: what a client can do to the
//! service before it has proved who it is (no identity provider, SFU or appointment is
//! needed for that), measured from outside (its memory, its log, its audit file).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metaclinic_loadtest::local::free_tcp_addr;

/// The process, killed when the test ends however it ends.
pub struct Standalone {
    child: Child,
    pub base: String,
    pub ws_url: String,
    pub addr: std::net::SocketAddr,
    pub audit_path: PathBuf,
    pub audit_key: PathBuf,
    pub checkpoint: PathBuf,
    /// What the process wrote to stderr (its log).
    pub log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Standalone {
    /// Start it with the configuration below, adjusted by `env` (METACLINIC_SIGNALING__...).
    /// Returns once /healthz answers (bounded: 30 s).
    pub async fn start(env: &[(&str, &str)]) -> Standalone {
        Self::launch(env, None).await
    }

    /// The same, the process limited to `open_files` file descriptors (ulimit -n).
    pub async fn start_with_open_files(env: &[(&str, &str)], open_files: u64) -> Standalone {
        Self::launch(env, Some(open_files)).await
    }

    async fn launch(env: &[(&str, &str)], open_files: Option<u64>) -> Standalone {
        // This test's own HTTP clients need it.
        metaclinic_signaling::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let addr = free_tcp_addr().unwrap();
        let appointments = dir.path().join("appointments");
        std::fs::create_dir_all(&appointments).unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let audit_key = dir.path().join("audit.key");
        let checkpoint = dir.path().join("checkpoint").join("audit.checkpoint");
        std::fs::write(
            &audit_key,
            "a test audit key of at least thirty-two bytes\n",
        )
        .unwrap();
        // Nothing listens at 127.0.0.1:9: a client that got as far as needing the identity
        // provider or an SFU would be refused, which no test here expects.
        let config = format!(
            r#"
[http]
listen = "{addr}"
public_url = "http://{addr}"

[identity]
issuer = "http://127.0.0.1:9/idp"
jwks_url = "http://127.0.0.1:9/jwks"
algorithms = ["ES256"]
fhir_base = "http://fhir.test/R4"

[booking]
backend = "files"

[booking.files]
dir = "{appointments}"

[sfu]
nodes = [{{ id = "sfu-none", url = "http://127.0.0.1:9", credential = "0123456789abcdef0123" }}]

[audit]
path = "{audit}"
key_file = "{key}"
checkpoint_path = "{checkpoint}"
"#,
            appointments = appointments.display(),
            audit = audit_path.display(),
            key = audit_key.display(),
            checkpoint = checkpoint.display(),
        );
        let config_path = dir.path().join("signaling.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("signaling.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_metaclinic"));
        command
            .arg("signaling")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .env("METACLINIC_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap());
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().unwrap();
        let mut s = Standalone {
            child,
            base: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/v1/ws"),
            addr,
            audit_path,
            audit_key,
            checkpoint,
            log_path,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", s.base)).await
                && r.status() == 200
            {
                break;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("signaling exited ({status}):\n{}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "signaling did not start:\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Its open file descriptors.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The audit log's records.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The value of a metric line starting with `name` and containing `labels`, or 0.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::metric(&text, name, labels)
    }

    /// A folder that lives as long as the process.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Raise this process's open-file limit to its hard limit (thousands of sockets per test).
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit struct that we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}
