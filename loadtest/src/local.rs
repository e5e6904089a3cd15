//! A `metaclinic` process started on this machine for a test or a benchmark: loopback ports
//! chosen free, configuration through the environment, CPU time read from /proc, and killed
//! when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control::SfuControl;

/// `count` consecutive UDP ports free on 127.0.0.1 right now.
pub fn free_udp_ports(count: u16) -> anyhow::Result<u16> {
    for attempt in 0..500u32 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let base = 20000
            + ((seed ^ std::process::id().wrapping_mul(2654435761) ^ attempt.wrapping_mul(7919))
                % 30000) as u16;
        let held: Vec<_> = (0..count)
            .map_while(|i| UdpSocket::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == count as usize {
            return Ok(base);
        }
    }
    anyhow::bail!("no {count} consecutive free UDP ports on 127.0.0.1")
}

pub fn free_tcp_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The `metaclinic` binary next to the running executable (cargo puts them side by side).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    // Test executables live one level down, in deps/.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "{name} not found next to {}; build it (cargo build --release) or pass its path",
        exe.display()
    )
}

/// CPU time (user + system) a process has used, from /proc/<pid>/stat.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; fields are counted after its closing paren.
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc stat format"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields[11].parse()?, fields[12].parse()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / ticks)
}

/// CPU seconds (user + system) of each thread of a process whose name starts with
/// `prefix`, by name, from /proc/<pid>/task/*/stat.
pub fn thread_cpu_seconds(pid: u32, prefix: &str) -> anyhow::Result<Vec<(String, f64)>> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(entry?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        if !name.starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let (u, s): (f64, f64) = (u.parse()?, s.parse()?);
        threads.push((name.to_owned(), (u + s) / ticks));
    }
    threads.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(threads)
}

/// Resident memory of a process in KiB, from /proc/<pid>/status.
pub fn process_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// A metric's value in Prometheus text exposition: the sum over the series of `name` whose
/// labels contain `labels` (pass "" for all).
pub fn metric_value(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A running `metaclinic sfu`.
pub struct LocalSfu {
    child: Child,
    pub control: SfuControl,
    pub control_addr: SocketAddr,
    pub media_port: u16,
    /// The ICE-TCP port.
    pub tcp_port: u16,
    pub media_threads: u16,
}

pub const LOCAL_CREDENTIAL: &str = "local-credential-0123456789";

/// Does the SFU's control API at `addr` answer `GET /healthz` with 200?
fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

impl LocalSfu {
    /// Start `binary sfu` with `media_threads` media threads on free loopback ports, plus
    /// any extra environment (config overrides). Waits until the control API listens.
    pub fn start(
        binary: &Path,
        media_threads: u16,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<LocalSfu> {
        let media_port = free_udp_ports(media_threads)?;
        let control_addr = free_tcp_addr()?;
        let tcp_port = free_tcp_addr()?.port();
        let mut cmd = Command::new(binary);
        cmd.arg("sfu")
            .env("METACLINIC_SFU__CONTROL__LISTEN", control_addr.to_string())
            .env("METACLINIC_SFU__CONTROL__CREDENTIAL", LOCAL_CREDENTIAL)
            .env("METACLINIC_SFU__RTC__BIND_IP", "127.0.0.1")
            .env("METACLINIC_SFU__RTC__UDP_PORT", media_port.to_string())
            .env("METACLINIC_SFU__RTC__TCP_PORT", tcp_port.to_string())
            .env(
                "METACLINIC_SFU__RTC__MEDIA_THREADS",
                media_threads.to_string(),
            )
            .env("METACLINIC_SFU__NODE__ANNOUNCED_IP", "127.0.0.1")
            .env(
                "METACLINIC_LOG",
                std::env::var("METACLINIC_LOG")
                    .unwrap_or_else(|_| "warn,rtc=error,sofar=error".into()),
            )
            .stdin(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        let control = SfuControl::new(&format!("http://{control_addr}"), LOCAL_CREDENTIAL);
        let mut sfu = LocalSfu {
            child,
            control,
            control_addr,
            media_port,
            tcp_port,
            media_threads,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = sfu.child.try_wait()? {
                anyhow::bail!("the SFU exited at start: {status}");
            }
            // The control port listens before the node has bound its media and TURN ports;
            // it answers once the node runs.
            if healthy(control_addr) {
                return Ok(sfu);
            }
            if Instant::now() > deadline {
                anyhow::bail!("the SFU did not listen within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn media_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.media_port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        process_cpu_seconds(self.pid())
    }
}

impl Drop for LocalSfu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
