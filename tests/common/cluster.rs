//! Several processes sharing one Redis, as deployed: `metaclinic sfu` nodes that register
//! themselves and `metaclinic signaling` replicas that place rooms from the registry, all
//! real child processes on loopback ports, killed when the test ends. Each test uses its own
//! key prefix in the real Redis on 127.0.0.1:6379, and removes its keys at the end.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use metaclinic_loadtest::SfuControl;
use metaclinic_loadtest::local::{free_tcp_addr, free_udp_ports};
use serde_json::Value;

use super::signaling::Idp;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const CREDENTIAL: &str = "cluster-test-credential-0123";

/// A key prefix of this test's own; its keys are deleted on drop.
pub struct RedisPrefix {
    pub prefix: String,
}

impl RedisPrefix {
    pub fn new() -> RedisPrefix {
        let client = redis::Client::open(REDIS_URL).unwrap();
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("Redis answers on 127.0.0.1:6379 (scripts/test starts one)");
        let _: String = redis::cmd("PING").query(&mut conn).unwrap();
        RedisPrefix {
            prefix: format!("mc-test-{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    /// Every key under the prefix.
    pub fn keys(&self) -> Vec<String> {
        let mut conn = self.connection();
        let iter: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)
            .unwrap();
        iter.filter_map(Result::ok).collect()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(format!("{}{key}", self.prefix))
            .query(&mut self.connection())
            .unwrap()
    }

    /// Milliseconds left on a key (-1: none, -2: no such key).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.connection())
            .unwrap()
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut self.connection());
        }
    }
}

/// A child process, killed on drop.
pub struct Proc {
    child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as Kubernetes sends it.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// SIGKILL: the process dies without a goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_filter() -> String {
    std::env::var("METACLINIC_LOG").unwrap_or_else(|_| "warn,rtc=error".into())
}

async fn wait_listening(proc: &mut Proc, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = proc.exited() {
            panic!("{} exited at start: {s}", proc.name);
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{} did not listen", proc.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `metaclinic sfu` node registered in the test's Redis prefix.
pub struct SfuNode {
    pub proc: Proc,
    pub id: String,
    pub control: SfuControl,
    pub base: String,
}

impl SfuNode {
    pub async fn start(prefix: &RedisPrefix, id: &str, env: &[(&str, &str)]) -> SfuNode {
        let media_port = free_udp_ports(1).unwrap();
        let control_addr = free_tcp_addr().unwrap();
        let tcp_port = free_tcp_addr().unwrap().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metaclinic"));
        cmd.arg("sfu")
            .env("METACLINIC_SFU__NODE__ID", id)
            .env("METACLINIC_SFU__NODE__ANNOUNCED_IP", "127.0.0.1")
            .env("METACLINIC_SFU__CONTROL__LISTEN", control_addr.to_string())
            .env("METACLINIC_SFU__CONTROL__CREDENTIAL", CREDENTIAL)
            .env("METACLINIC_SFU__RTC__BIND_IP", "127.0.0.1")
            .env("METACLINIC_SFU__RTC__UDP_PORT", media_port.to_string())
            .env("METACLINIC_SFU__RTC__TCP_PORT", tcp_port.to_string())
            .env("METACLINIC_SFU__RTC__MEDIA_THREADS", "1")
            .env("METACLINIC_SFU__REDIS__URL", REDIS_URL)
            .env("METACLINIC_SFU__REDIS__KEY_PREFIX", &prefix.prefix)
            .env("METACLINIC_SFU__REDIS__HEARTBEAT_INTERVAL_MS", "200")
            .env("METACLINIC_SFU__REDIS__NODE_TTL_MS", "1000")
            .env("METACLINIC_LOG", log_filter())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc {
            child: cmd.spawn().unwrap(),
            name: format!("sfu {id}"),
        };
        wait_listening(&mut proc, control_addr).await;
        let base = format!("http://{control_addr}");
        SfuNode {
            proc,
            id: id.to_owned(),
            control: SfuControl::new(&base, CREDENTIAL),
            base,
        }
    }

    /// Whether the room is open on this node.
    pub async fn has_room(&self, room: &str) -> bool {
        self.control.room(room).await.is_ok()
    }
}

/// What every signaling replica shares: the identity provider, the appointments folder.
pub struct Shared {
    pub idp: Idp,
    pub dir: tempfile::TempDir,
}

impl Shared {
    pub async fn start() -> Shared {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("appointments")).unwrap();
        Shared {
            idp: Idp::start().await,
            dir,
        }
    }

    pub fn appointments(&self) -> PathBuf {
        self.dir.path().join("appointments")
    }

    /// Book an appointment (a FHIR Appointment JSON file the replicas read).
    pub fn book(&self, appointment: &Value) {
        let id = appointment["id"].as_str().unwrap();
        std::fs::write(
            self.appointments().join(format!("{id}.json")),
            serde_json::to_vec_pretty(appointment).unwrap(),
        )
        .unwrap();
    }
}

/// A `metaclinic signaling` replica on the test's Redis prefix.
pub struct Signaling {
    pub proc: Proc,
    pub base: String,
    pub ws_url: String,
}

impl Signaling {
    pub async fn start(shared: &Shared, prefix: &RedisPrefix, name: &str) -> Signaling {
        let addr = free_tcp_addr().unwrap();
        let config = shared.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, config_toml(shared, prefix, name, addr)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_metaclinic"))
            .arg("signaling")
            .arg("--config")
            .arg(&config)
            .env("METACLINIC_LOG", log_filter())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut proc = Proc {
            child,
            name: format!("signaling {name}"),
        };
        wait_listening(&mut proc, addr).await;
        Signaling {
            proc,
            base: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/v1/ws"),
        }
    }
}

fn config_toml(shared: &Shared, prefix: &RedisPrefix, name: &str, addr: SocketAddr) -> String {
    let dir = shared.dir.path();
    format!(
        r#"
[http]
listen = "{addr}"
public_url = "http://{addr}"

[identity]
issuer = "{issuer}"
audience = "{audience}"
jwks_url = "{jwks}"
algorithms = ["ES256"]
fhir_base = "http://fhir.test/R4"

[booking]
backend = "files"

[booking.files]
dir = "{appointments}"

[policy]
interpreters_direct = true
recheck_interval_s = 2

[sfu]
credential = "{credential}"

[audit]
path = "{audit}"
key_file = "{audit_key}"

[drain]
deadline_s = 10
reconnect_after_ms = 100

[redis]
url = "{redis}"
key_prefix = "{prefix}"
registry_poll_ms = 200
replica_id = "{name}"
"#,
        issuer = shared.idp.issuer,
        audience = shared.idp.audience,
        jwks = shared.idp.jwks_url,
        appointments = shared.appointments().display(),
        credential = CREDENTIAL,
        audit = dir.join(format!("audit-{name}.jsonl")).display(),
        audit_key = audit_key(dir).display(),
        redis = REDIS_URL,
        prefix = prefix.prefix,
    )
}

/// The audit key the replicas share (written once per test).
fn audit_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("audit.key");
    if !path.exists() {
        std::fs::write(&path, "a test audit key of at least thirty-two bytes\n").unwrap();
    }
    path
}

/// GET a URL; (status, body).
pub async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Poll until `cond` holds (bounded); returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
