//! What a load run talks to: a deployment given by `--url`, or `metaclinic dev` started here
//! as a child process with a folder of appointments generated for the run. Runs stay on this
//! machine unless `--allow-remote` says otherwise.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::local::{free_tcp_addr, free_udp_ports};

/// Host and port of an http(s) URL.
pub fn url_host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("--url must be http://... or https://..., not {url}"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => anyhow::bail!("--url: unsupported scheme {other}"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("--url: bad IPv6 host"))?;
        let port = after.strip_prefix(':').map(str::parse).transpose()?;
        (h.to_owned(), port.unwrap_or(default_port))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse()?),
            None => (authority.to_owned(), default_port),
        }
    };
    anyhow::ensure!(!host.is_empty(), "--url has no host");
    Ok((host, port))
}

/// The addresses `url`'s host resolves to.
pub fn resolve(url: &str) -> anyhow::Result<Vec<IpAddr>> {
    let (host, port) = url_host_port(url)?;
    let addrs: Vec<IpAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--url: cannot resolve {host}: {e}"))?
        .map(|a| a.ip())
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "--url: {host} resolves to nothing");
    Ok(addrs)
}

/// Refuse a target off this machine unless the operator said so.
pub fn check_target(url: &str, allow_remote: bool) -> anyhow::Result<()> {
    let addrs = resolve(url)?;
    if !allow_remote && addrs.iter().any(|a| !a.is_loopback()) {
        anyhow::bail!(
            "{url} is not on this machine (loopback); a load run against another host needs --allow-remote"
        );
    }
    Ok(())
}

/// The local address participants bind to so that their host candidates reach `url`'s host
/// (loopback for a local target; the routed interface's address otherwise).
pub fn local_ip_towards(url: &str) -> anyhow::Result<IpAddr> {
    let addrs = resolve(url)?;
    let ip = addrs[0];
    if ip.is_loopback() {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for the route.
    let socket = UdpSocket::bind((
        if ip.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        },
        0,
    ))?;
    socket.connect((ip, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// `metaclinic dev` started by the load tool, killed when dropped.
pub struct DevChild {
    child: Child,
    /// Signaling's base URL.
    pub base: String,
    /// The folder of appointments it serves (generated for the run; removed when dropped).
    pub appointments: PathBuf,
}

impl DevChild {
    /// Start `binary dev --appointments dir` on free loopback ports with `media_threads`
    /// media threads; returns once signaling answers.
    pub fn start(binary: &Path, appointments: &Path, media_threads: u16) -> anyhow::Result<Self> {
        let http = free_tcp_addr()?;
        let udp = free_udp_ports(media_threads.max(1))?;
        let base = format!("http://{http}");
        let data = appointments.with_extension("data");
        let mut child = Command::new(binary)
            .arg("dev")
            .arg("--appointments")
            .arg(appointments)
            .env("METACLINIC_SIGNALING__HTTP__LISTEN", http.to_string())
            .env("METACLINIC_SIGNALING__HTTP__PUBLIC_URL", &base)
            .env(
                "METACLINIC_SIGNALING__AUDIT__PATH",
                data.join("audit.jsonl").display().to_string(),
            )
            .env("METACLINIC_SFU__RTC__UDP_PORT", udp.to_string())
            .env(
                "METACLINIC_SFU__RTC__TCP_PORT",
                free_tcp_addr()?.port().to_string(),
            )
            .env(
                "METACLINIC_SFU__RTC__MEDIA_THREADS",
                media_threads.to_string(),
            )
            .env("METACLINIC_SFU__RTC__BIND_IP", "127.0.0.1")
            .env("METACLINIC_SFU__NODE__ANNOUNCED_IP", "127.0.0.1")
            .env(
                "METACLINIC_LOG",
                std::env::var("METACLINIC_LOG")
                    .unwrap_or_else(|_| "warn,rtc=error,sofar=error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        // Drain the banner so the child never blocks on a full pipe.
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(
                move || for _ in BufReader::new(out).lines().map_while(Result::ok) {},
            );
        }
        let mut dev = DevChild {
            child,
            base,
            appointments: appointments.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = dev.child.try_wait()? {
                anyhow::bail!("metaclinic dev exited at start: {status}");
            }
            if std::net::TcpStream::connect(http).is_ok() {
                return Ok(dev);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "metaclinic dev did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DevChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.appointments);
        let _ = std::fs::remove_dir_all(self.appointments.with_extension("data"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_remote_targets_refused_without_the_flag() {
        assert_eq!(
            url_host_port("http://127.0.0.1:8080/x").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(
            url_host_port("https://clinic.example.org").unwrap(),
            ("clinic.example.org".into(), 443)
        );
        assert_eq!(url_host_port("http://[::1]:9/").unwrap(), ("::1".into(), 9));
        assert!(url_host_port("ftp://x").is_err());
        assert!(check_target("http://127.0.0.1:8080", false).is_ok());
        assert!(check_target("http://localhost:8080", false).is_ok());
        // A literal address needs no name lookup: refused without --allow-remote.
        let e = check_target("http://192.0.2.10:8080", false).unwrap_err();
        assert!(e.to_string().contains("--allow-remote"), "{e}");
        assert!(check_target("http://192.0.2.10:8080", true).is_ok());
        assert_eq!(
            local_ip_towards("http://127.0.0.1:1").unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }
}
