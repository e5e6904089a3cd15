//! Shared harness of the end-to-end tests: a real `metaclinic sfu` process on loopback ports
//! chosen for the test, and helpers to wait (boundedly) for conditions.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metaclinic_loadtest::SfuControl;

pub const CREDENTIAL: &str = "test-credential-0123456789";

/// `count` consecutive free UDP ports on 127.0.0.1.
fn free_udp_ports(count: u16) -> u16 {
    for _ in 0..200 {
        let base: u16 = rand_port();
        let held: Vec<_> = (0..count).map_while(|i| UdpSocket::bind(("127.0.0.1", base + i)).ok()).collect();
        if held.len() == count as usize {
            return base;
        }
    }
    panic!("no {count} consecutive free UDP ports");
}

fn rand_port() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let pid = std::process::id();
    20000 + ((nanos ^ pid.wrapping_mul(2654435761)) % 30000) as u16
}

fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running SFU node, killed when dropped.
pub struct SfuProcess {
    child: Child,
    pub control: SfuControl,
    pub control_addr: SocketAddr,
    pub media_port: u16,
    pub media_threads: u16,
}

impl SfuProcess {
    pub fn start(media_threads: u16) -> SfuProcess {
        Self::start_with(media_threads, &[])
    }

    pub fn start_with(media_threads: u16, extra_env: &[(&str, &str)]) -> SfuProcess {
        let media_port = free_udp_ports(media_threads);
        let control_addr = free_tcp_addr();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metaclinic"));
        cmd.arg("sfu")
            .env("METACLINIC_SFU__CONTROL__LISTEN", control_addr.to_string())
            .env("METACLINIC_SFU__CONTROL__CREDENTIAL", CREDENTIAL)
            .env("METACLINIC_SFU__RTC__BIND_IP", "127.0.0.1")
            .env("METACLINIC_SFU__RTC__UDP_PORT", media_port.to_string())
            .env("METACLINIC_SFU__RTC__MEDIA_THREADS", media_threads.to_string())
            .env("METACLINIC_SFU__NODE__ANNOUNCED_IP", "127.0.0.1")
            .env("METACLINIC_LOG", std::env::var("METACLINIC_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the metaclinic binary starts");
        let control = SfuControl::new(&format!("http://{control_addr}"), CREDENTIAL);
        let mut sfu = SfuProcess { child, control, control_addr, media_port, media_threads };
        sfu.wait_healthy();
        sfu
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the SFU exited at start: {status}");
            }
            if std::net::TcpStream::connect(self.control_addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the SFU did not start listening within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn media_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.media_port))
    }

    /// Still running?
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SfuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value from the exposition text (sum over label sets that contain `labels`).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b'{') || l.as_bytes().get(name.len()) == Some(&b' ')))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Serve `html` for every GET on a loopback port, for as long as the test runs.
pub async fn serve_page(html: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

pub mod browser;
