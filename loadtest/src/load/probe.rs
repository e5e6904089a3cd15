//! The servers' side of a measurement: CPU seconds and memory of the SFU and of signaling,
//! read from /proc for processes on this machine, from their Prometheus metrics otherwise
//! (the conventional `process_cpu_seconds_total` and `process_resident_memory_bytes`, when the
//! deployment exposes them).

use std::time::Duration;

use crate::local::{metric_value, process_cpu_seconds, process_rss_kb};

/// How to read the servers.
#[derive(Debug, Clone)]
pub enum ServerProbe {
    /// `metaclinic dev`: SFU and signaling in one process. The SFU's share is its own
    /// threads ([`is_sfu_thread`]); the rest (HTTP, WebSockets, control API) is
    /// signaling's. Memory is the process's, both together.
    DevProcess { pid: u32 },
    /// A `metaclinic sfu` process alone (no signaling in the run).
    SfuProcess { pid: u32 },
    /// Remote processes' Prometheus endpoints; either may be missing.
    Prometheus {
        signaling: Option<String>,
        sfu: Option<String>,
        /// The SFU's service credential, if its /metrics asks for one.
        sfu_credential: Option<String>,
    },
}

/// One reading. `None` where the source does not tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerReading {
    pub sfu_cpu_s: Option<f64>,
    pub signaling_cpu_s: Option<f64>,
    /// Resident memory of the server side (both services together for dev mode).
    pub rss_kb: Option<u64>,
}

impl ServerProbe {
    pub fn source(&self) -> &'static str {
        match self {
            ServerProbe::DevProcess { .. } | ServerProbe::SfuProcess { .. } => "proc",
            ServerProbe::Prometheus { .. } => "prometheus",
        }
    }

    pub async fn read(&self) -> ServerReading {
        match self {
            ServerProbe::DevProcess { pid } => {
                let pid = *pid;
                let total = process_cpu_seconds(pid).ok();
                let sfu = thread_cpu_seconds(pid, is_sfu_thread).ok();
                ServerReading {
                    sfu_cpu_s: sfu,
                    signaling_cpu_s: total.zip(sfu).map(|(t, s)| (t - s).max(0.0)),
                    rss_kb: process_rss_kb(pid).ok(),
                }
            }
            ServerProbe::SfuProcess { pid } => ServerReading {
                sfu_cpu_s: process_cpu_seconds(*pid).ok(),
                signaling_cpu_s: None,
                rss_kb: process_rss_kb(*pid).ok(),
            },
            ServerProbe::Prometheus {
                signaling,
                sfu,
                sfu_credential,
            } => {
                let sig = match signaling {
                    Some(url) => scrape(url, None).await,
                    None => None,
                };
                let sfu = match sfu {
                    Some(url) => scrape(url, sfu_credential.as_deref()).await,
                    None => None,
                };
                let cpu = |text: &Option<String>| {
                    text.as_deref()
                        .filter(|t| has_metric(t, "process_cpu_seconds_total"))
                        .map(|t| metric_value(t, "process_cpu_seconds_total", ""))
                };
                let rss = |text: &Option<String>| {
                    text.as_deref()
                        .filter(|t| has_metric(t, "process_resident_memory_bytes"))
                        .map(|t| metric_value(t, "process_resident_memory_bytes", "") as u64 / 1024)
                };
                let rss_kb = match (rss(&sig), rss(&sfu)) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
                };
                ServerReading {
                    sfu_cpu_s: cpu(&sfu),
                    signaling_cpu_s: cpu(&sig),
                    rss_kb,
                }
            }
        }
    }
}

fn has_metric(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| !l.starts_with('#') && l.starts_with(name))
}

async fn scrape(url: &str, credential: Option<&str>) -> Option<String> {
    let mut req = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3));
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// Is this thread of a `metaclinic dev` process the SFU's? Its media threads, the spatial
/// mixer's workers (a shared room's mixing runs there, not on the media thread), the
/// embedded TURN server and ICE-TCP's accepting threads; signaling's run on tokio's.
pub fn is_sfu_thread(name: &str) -> bool {
    ["media-", "mixer-", "turn", "ice-tcp"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// CPU seconds (user + system) of the threads of `pid` whose name matches.
pub fn thread_cpu_seconds(pid: u32, matches: impl Fn(&str) -> bool) -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(entry?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !matches(&stat[open + 1..close]) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
            total += u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sfu_s_threads_are_told_from_signaling_s() {
        for sfu in [
            "media-0",
            "media-15",
            "mixer-0",
            "mixer-11",
            "turn",
            "ice-tcp-accept",
        ] {
            assert!(is_sfu_thread(sfu), "{sfu}");
        }
        for signaling in [
            "tokio-runtime-w",
            "booking-reload",
            "audit-writer",
            "metaclinic",
        ] {
            assert!(!is_sfu_thread(signaling), "{signaling}");
        }
    }

    #[test]
    fn a_named_thread_s_cpu_is_counted_apart() {
        let pid = std::process::id();
        let (busy, done) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let spin = std::thread::Builder::new()
            .name("media-probe".into())
            .spawn(move || {
                // Burn 50 ms of this thread's own CPU time, however busy the machine is.
                let own = || {
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    // SAFETY: a valid clock id and a valid out pointer.
                    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
                };
                let mut x = 0u64;
                while own() < 0.05 {
                    x = x.wrapping_mul(31).wrapping_add(1);
                }
                std::hint::black_box(x);
                let _ = busy.send(());
                let _ = wait.recv();
            })
            .unwrap();
        done.recv().unwrap();
        let media = thread_cpu_seconds(pid, |n| n.starts_with("media-")).unwrap();
        let none = thread_cpu_seconds(pid, |n| n == "no-such-thread").unwrap();
        release.send(()).unwrap();
        spin.join().unwrap();
        // Clock ticks are 10 ms: 50 ms of CPU shows as at least 40.
        assert!(media >= 0.04, "{media}");
        assert_eq!(none, 0.0);
        assert!(process_cpu_seconds(pid).unwrap() >= media);
    }
}
