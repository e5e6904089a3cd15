//! Budgets: unauthenticated requests per source, bytes per allocation, connections per IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Take `n` tokens if there are that many.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Sources tracked at most; beyond it the table is emptied (a flood from many addresses
/// costs the flooders their history, never unbounded memory).
const MAX_SOURCES: usize = 65_536;

/// Unauthenticated (or refused) requests per source IP.
pub struct SourceRate {
    per_second: f64,
    sources: HashMap<IpAddr, Bucket>,
}

impl SourceRate {
    pub fn new(per_second: u32) -> SourceRate {
        SourceRate {
            per_second: f64::from(per_second),
            sources: HashMap::new(),
        }
    }

    /// Whether one more request from `ip` is within its rate.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            self.sources.clear();
        }
        let (rate, burst) = (self.per_second, self.per_second * 2.0);
        self.sources
            .entry(ip)
            .or_insert_with(|| Bucket::new(rate, burst, now))
            .take(1.0, now)
    }
}

/// TCP/TLS connection slots: in total and per client IP. A slot is held as long as its
/// guard lives.
#[derive(Clone)]
pub struct ConnSlots {
    inner: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
    total: usize,
    per_ip: usize,
}

pub struct ConnSlot {
    slots: ConnSlots,
    ip: IpAddr,
}

impl ConnSlots {
    pub fn new(total: usize, per_ip: usize) -> ConnSlots {
        ConnSlots {
            inner: Arc::new(Mutex::new((0, HashMap::new()))),
            total,
            per_ip,
        }
    }

    pub fn take(&self, ip: IpAddr) -> Option<ConnSlot> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let held = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= self.total || held >= self.per_ip {
            return None;
        }
        g.0 += 1;
        g.1.insert(ip, held + 1);
        Some(ConnSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let t = Instant::now();
        let mut b = Bucket::new(10.0, 2.0, t);
        assert!(b.take(1.0, t) && b.take(1.0, t) && !b.take(1.0, t));
        assert!(b.take(1.0, t + Duration::from_millis(100)));
    }

    #[test]
    fn connection_slots_are_bounded_per_ip_and_returned() {
        let s = ConnSlots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = s.take(a).unwrap();
        let _two = s.take(a).unwrap();
        assert!(s.take(a).is_none());
        let _three = s.take(b).unwrap();
        assert!(s.take(b).is_none(), "total reached");
        drop(one);
        assert!(s.take(a).is_some());
    }
}
