//! A bad network between one participant and the SFU, inside the client library: loss
//! (random or in bursts), delay with jitter (which reorders), and a bandwidth cap with a
//! bounded queue. Each direction of a participant's link has its own [`Link`]; datagrams
//! wait in it until their release time, as they would in a home router's queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// How one direction of a link misbehaves. The default is a perfect link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// Share of datagrams lost, 0.0 to 1.0.
    pub loss: f64,
    /// Mean length of a loss burst, in datagrams (1.0: independent random loss).
    pub burst: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter]; datagrams overtake each other.
    pub jitter: Duration,
    /// Bandwidth cap in kbit/s (None: unlimited).
    pub rate_kbps: Option<u32>,
    /// Longest a datagram may wait behind the cap before the queue drops it.
    pub queue: Duration,
    /// Seed of the loss and jitter draws, so that a run can be repeated.
    pub seed: u64,
    /// Lose the first RTP packet of every stream (SSRC) with this payload type, read from
    /// the header SRTP leaves in the clear. Towards a subscriber, a video stream's first
    /// packet is the start of its first keyframe.
    pub lose_first_of_payload_type: Option<u8>,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            loss: 0.0,
            burst: 1.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_kbps: None,
            queue: Duration::from_millis(200),
            seed: 1,
            lose_first_of_payload_type: None,
        }
    }
}

impl LinkSpec {
    pub fn lossy(loss: f64) -> Self {
        LinkSpec {
            loss,
            ..Default::default()
        }
    }

    pub fn capped(kbps: u32) -> Self {
        LinkSpec {
            rate_kbps: Some(kbps),
            ..Default::default()
        }
    }
}

/// What a link did, for reports and test checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    pub passed: u64,
    pub lost: u64,
    /// Dropped because the queue behind the bandwidth cap was full.
    pub queue_drops: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    at: Instant,
    /// Arrival order, so equal release times keep their order.
    order: u64,
    addr: SocketAddr,
    data: Vec<u8>,
}

/// One direction of a participant's link.
pub struct Link {
    spec: LinkSpec,
    rng: SmallRng,
    /// Gilbert-Elliott state: in a burst, every datagram is lost.
    in_burst: bool,
    /// When the cap's "wire" is free again.
    wire_free_at: Option<Instant>,
    held: BinaryHeap<Reverse<Held>>,
    order: u64,
    /// Streams whose first packet went by (see `LinkSpec::lose_first_of_payload_type`).
    streams_seen: std::collections::HashSet<u32>,
    pub stats: LinkStats,
}

impl Link {
    pub fn new(spec: LinkSpec) -> Link {
        Link {
            rng: SmallRng::seed_from_u64(spec.seed),
            spec,
            in_burst: false,
            wire_free_at: None,
            held: BinaryHeap::new(),
            order: 0,
            streams_seen: Default::default(),
            stats: LinkStats::default(),
        }
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Change how the link behaves from now on; datagrams already held keep their times.
    pub fn set_spec(&mut self, spec: LinkSpec) {
        self.spec = spec;
    }

    /// Two-state loss: from the good state a burst starts with probability p, and a burst
    /// ends with probability 1/burst, so bursts average `burst` datagrams and the long-run
    /// loss is `loss`.
    fn lose(&mut self) -> bool {
        let loss = self.spec.loss.clamp(0.0, 1.0);
        if loss <= 0.0 {
            self.in_burst = false;
            return false;
        }
        if loss >= 1.0 {
            return true;
        }
        let end = 1.0 / self.spec.burst.max(1.0);
        let start = (loss * end / (1.0 - loss)).min(1.0);
        self.in_burst = if self.in_burst {
            self.rng.random::<f64>() >= end
        } else {
            self.rng.random::<f64>() < start
        };
        self.in_burst
    }

    /// Is `data` the first RTP packet of a stream whose first packet this link loses?
    fn first_of_its_stream(&mut self, data: &[u8]) -> bool {
        let Some(pt) = self.spec.lose_first_of_payload_type else {
            return false;
        };
        // RTP version 2; RTCP's packet types (200-206) never match a dynamic payload type.
        if data.len() < 12 || data[0] >> 6 != 2 || data[1] & 0x7f != pt {
            return false;
        }
        let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        self.streams_seen.insert(ssrc)
    }

    /// A datagram enters the link at `now`: it is lost, dropped by the full queue, or held
    /// until its release time.
    pub fn push(&mut self, now: Instant, addr: SocketAddr, data: Vec<u8>) {
        if self.lose() || self.first_of_its_stream(&data) {
            self.stats.lost += 1;
            return;
        }
        let mut at = now;
        if let Some(kbps) = self.spec.rate_kbps {
            let start = self.wire_free_at.map_or(now, |t| t.max(now));
            if start.duration_since(now) > self.spec.queue {
                self.stats.queue_drops += 1;
                return;
            }
            // Bits on the wire (IP + UDP headers included) at the capped rate.
            let bits = (data.len() as u64 + 28) * 8;
            let done = start + Duration::from_micros(bits * 1000 / u64::from(kbps.max(1)));
            self.wire_free_at = Some(done);
            at = done;
        }
        at += self.spec.delay;
        if !self.spec.jitter.is_zero() {
            at += self.spec.jitter.mul_f64(self.rng.random::<f64>());
        }
        self.stats.passed += 1;
        self.order += 1;
        self.held.push(Reverse(Held {
            at,
            order: self.order,
            addr,
            data,
        }));
    }

    /// The next datagram whose time has come.
    pub fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if self.held.peek().is_some_and(|Reverse(h)| h.at <= now) {
            self.held.pop().map(|Reverse(h)| (h.addr, h.data))
        } else {
            None
        }
    }

    /// When the next held datagram is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.peek().map(|Reverse(h)| h.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn run(spec: LinkSpec, n: usize) -> (Link, Vec<bool>) {
        let mut link = Link::new(spec);
        let now = Instant::now();
        let mut passed = Vec::new();
        for i in 0..n {
            let before = link.stats.passed;
            link.push(now, addr(), vec![i as u8; 100]);
            passed.push(link.stats.passed > before);
        }
        (link, passed)
    }

    #[test]
    fn random_loss_is_close_to_the_configured_share() {
        let (link, _) = run(LinkSpec::lossy(0.05), 20_000);
        let share = link.stats.lost as f64 / 20_000.0;
        assert!((0.04..0.06).contains(&share), "{share}");
    }

    #[test]
    fn bursts_have_the_configured_mean_length() {
        let (link, passed) = run(
            LinkSpec {
                loss: 0.1,
                burst: 4.0,
                ..Default::default()
            },
            50_000,
        );
        let share = link.stats.lost as f64 / 50_000.0;
        assert!((0.08..0.12).contains(&share), "{share}");
        let bursts = passed.windows(2).filter(|w| w[0] && !w[1]).count();
        let mean = link.stats.lost as f64 / bursts as f64;
        assert!((3.0..5.0).contains(&mean), "mean burst {mean}");
    }

    #[test]
    fn the_cap_spaces_datagrams_and_drops_beyond_the_queue() {
        // 100 kbit/s: a 100-byte datagram (+28 header bytes) takes 10.24 ms.
        let spec = LinkSpec {
            rate_kbps: Some(100),
            queue: Duration::from_millis(100),
            ..Default::default()
        };
        let (mut link, _) = run(spec, 50);
        assert!(link.stats.queue_drops > 30, "{:?}", link.stats);
        assert!(
            link.stats.passed >= 10 && link.stats.passed <= 12,
            "{:?}",
            link.stats
        );
        let first = link.next_release().unwrap();
        let mut times = vec![];
        let far = first + Duration::from_secs(10);
        while let Some(at) = link.next_release() {
            times.push(at);
            link.pop_due(far);
        }
        let gap = times[1].duration_since(times[0]);
        assert!(
            gap >= Duration::from_micros(10_000) && gap <= Duration::from_micros(10_500),
            "{gap:?}"
        );
    }

    #[test]
    fn jitter_reorders_and_nothing_leaves_early() {
        let spec = LinkSpec {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(30),
            ..Default::default()
        };
        let mut link = Link::new(spec);
        let now = Instant::now();
        for i in 0..100u8 {
            link.push(now + Duration::from_millis(i as u64), addr(), vec![i]);
        }
        assert!(link.pop_due(now + Duration::from_millis(19)).is_none());
        let mut order = vec![];
        while let Some((_, d)) = link.pop_due(now + Duration::from_secs(1)) {
            order.push(d[0]);
        }
        assert_eq!(order.len(), 100);
        assert!(order.windows(2).any(|w| w[1] < w[0]), "jitter must reorder");
    }
}
