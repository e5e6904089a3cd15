//! `metaclinic dev` as a child process on free loopback ports, for the tests that try what a
//! new user tries (the README's run command).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metaclinic_loadtest::local::{free_tcp_addr, free_udp_ports};

/// The dev process, killed when the test ends however it ends.
pub struct DevProcess {
    child: Child,
    /// Signaling's base URL, e.g. http://127.0.0.1:34567
    pub base: String,
    /// What it printed at start, up to the token example.
    pub banner: String,
    /// The SFU node's control API (its `/metrics`).
    pub sfu_control: String,
    /// Where its log (stderr) goes, when the test reads it (`start_dev_logged`).
    pub log_path: Option<std::path::PathBuf>,
}

impl DevProcess {
    /// Its log so far (empty unless started with `start_dev_logged`).
    pub fn log(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `metaclinic dev`; returns once its banner is out (bounded: 30 s).
pub async fn start_dev() -> DevProcess {
    launch(None, &[]).await
}

/// `start_dev` with more environment (configuration overrides).
#[allow(dead_code)]
pub async fn start_dev_with(env: &[(String, String)]) -> DevProcess {
    launch(None, env).await
}

/// `start_dev` with its log written to `log_path`, our own code at debug level (what a test
/// looks for must not be there even then; the WebRTC library at its production level).
#[allow(dead_code)]
pub async fn start_dev_logged(log_path: std::path::PathBuf) -> DevProcess {
    launch(Some(log_path), &[]).await
}

async fn launch(log_path: Option<std::path::PathBuf>, env: &[(String, String)]) -> DevProcess {
    let http = free_tcp_addr().unwrap();
    let udp = free_udp_ports(1).unwrap();
    let base = format!("http://{http}");
    let control = free_tcp_addr().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_metaclinic"));
    command
        .arg("dev")
        .env("METACLINIC_SIGNALING__HTTP__LISTEN", http.to_string())
        .env("METACLINIC_SIGNALING__HTTP__PUBLIC_URL", &base)
        .env("METACLINIC_SFU__RTC__UDP_PORT", udp.to_string())
        .env(
            "METACLINIC_SFU__RTC__TCP_PORT",
            free_tcp_addr().unwrap().port().to_string(),
        )
        .env("METACLINIC_SFU__RTC__MEDIA_THREADS", "1")
        .env("METACLINIC_SFU__CONTROL__LISTEN", control.to_string())
        .env("METACLINIC_SFU__RTC__BIND_IP", "127.0.0.1")
        .env("METACLINIC_SFU__NODE__ANNOUNCED_IP", "127.0.0.1")
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    if let Some(path) = &log_path {
        command
            .env(
                "METACLINIC_LOG",
                "debug,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn,sofar=error",
            )
            .stderr(std::fs::File::create(path).unwrap());
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut dev = DevProcess {
        child,
        base,
        banner: String::new(),
        sfu_control: format!("http://{control}"),
        log_path,
    };
    let banner = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.contains("May they join?") {
                break;
            }
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !banner.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(banner.is_finished(), "no dev banner within 30 s");
    dev.banner = banner.join().unwrap();
    dev.wait_until_serving().await;
    dev
}

impl DevProcess {
    /// Wait (bounded, 10 s) until signaling answers /healthz; say how the process ended if it
    /// did. The listener is bound before the banner, so this should hold at once; a CI run
    /// once found the port refusing connections right after the banner.
    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = format!("{}/healthz", self.base);
        metaclinic_signaling::install_crypto_provider();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("metaclinic dev exited after its banner: {status}");
            }
            let answered = reqwest::get(&url).await;
            match answered {
                Ok(r) if r.status() == 200 => return,
                other if Instant::now() > deadline => {
                    panic!("metaclinic dev does not serve {url} 10 s after its banner: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
