//! A small jitter buffer per source: packets go in out of order, one playout decision comes
//! out per packet slot. It decides only (play this packet, conceal a loss, stay silent); the
//! caller decodes. Memory is bounded by a fixed ring of [`CAPACITY`] packets whatever arrives.

/// Packets held at most (1.28 s of 20 ms frames).
pub const CAPACITY: usize = 64;
/// Largest payload accepted (a 120 ms Opus packet at 510 kb/s is 7,650 bytes; WebRTC's are
/// far smaller, and an RTP packet has to fit a 1,500-byte MTU anyway).
pub const MAX_PAYLOAD: usize = 1500;
/// Consecutive packets far outside the playout window after which the stream is taken to have
/// restarted (a sender reset) rather than being hostile noise.
const RESYNC_AFTER: u32 = 3;
/// Extended sequence numbers start here so they can go below the first packet's number.
const EXT_BASE: u64 = 1 << 32;

/// One queued RTP payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub ext_seq: u64,
    pub rtp_timestamp: u32,
    pub payload: Vec<u8>,
    /// RFC 6464 level, -dBov (0 loudest, 127 silence).
    pub audio_level: Option<u8>,
}

/// What to do for the next packet slot.
#[derive(Debug, PartialEq)]
pub enum Playout<'a> {
    /// Decode this packet.
    Play(Packet),
    /// The packet is missing: conceal it, from the in-band FEC of `next` if that is buffered.
    Conceal { next: Option<&'a Packet> },
    /// Nothing to play (not started, or the talk spurt ended).
    Silent,
}

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Empty, or longer than [`MAX_PAYLOAD`].
    InvalidPayload,
    /// Its slot was already played (or concealed).
    Late,
    /// Already queued.
    Duplicate,
    /// Further ahead than the buffer holds (kept only if such packets keep coming).
    TooFarAhead,
}

/// Counters, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub accepted: u64,
    pub played: u64,
    pub concealed: u64,
    pub late: u64,
    pub duplicate: u64,
    pub invalid: u64,
    pub too_far_ahead: u64,
    /// Packets skipped to catch up when the buffer grew too deep.
    pub overflow_skipped: u64,
    pub resyncs: u64,
}

/// Reorders one source's packets by sequence number and paces them out one slot at a time.
#[derive(Debug)]
pub struct JitterBuffer {
    slots: Box<[Option<Packet>]>,
    buffered: usize,
    /// Next extended sequence number to play; `None` while buffering (idle).
    next: Option<u64>,
    /// Highest extended sequence number accepted: the reference for unwrapping.
    highest: Option<u64>,
    /// Everything below this has been played or given up: such packets are late.
    floor: u64,
    target: u32,
    max_concealed: u32,
    concealed_run: u32,
    idle_ticks: u32,
    wild_run: u32,
    last_wild: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// `target`: packets to collect before playing; `max_concealed`: losses concealed in a row
    /// with nothing buffered before the source is considered stopped.
    pub fn new(target: u32, max_concealed: u32) -> JitterBuffer {
        JitterBuffer {
            slots: (0..CAPACITY).map(|_| None).collect(),
            buffered: 0,
            next: None,
            highest: None,
            floor: 0,
            target: target.clamp(1, CAPACITY as u32 / 2),
            max_concealed,
            concealed_run: 0,
            idle_ticks: 0,
            wild_run: 0,
            last_wild: 0,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets currently queued.
    pub fn len(&self) -> usize {
        self.buffered
    }

    pub fn is_empty(&self) -> bool {
        self.buffered == 0
    }

    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => EXT_BASE + u64::from(seq),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                h.saturating_add_signed(delta)
            }
        }
    }

    fn slot(ext: u64) -> usize {
        (ext % CAPACITY as u64) as usize
    }

    /// Queue a packet. Never panics; every refusal is counted.
    pub fn push(
        &mut self,
        seq: u16,
        rtp_timestamp: u32,
        payload: &[u8],
        audio_level: Option<u8>,
    ) -> Result<(), DropReason> {
        if payload.is_empty() || payload.len() > MAX_PAYLOAD {
            self.stats.invalid += 1;
            return Err(DropReason::InvalidPayload);
        }
        let mut ext = self.extend(seq);
        let far_behind = ext.saturating_add(CAPACITY as u64) < self.floor;
        // The window of sequence numbers the ring can hold without aliasing.
        let low = match (self.next, self.highest) {
            (Some(n), _) => n,
            (None, Some(h)) => self.floor.max(h.saturating_sub(CAPACITY as u64 - 1)),
            (None, None) => ext,
        };
        let far_ahead = ext >= low + CAPACITY as u64;
        if far_behind || (far_ahead && self.next.is_some()) {
            // One wild packet must not derail the stream; a run of consistent ones means the
            // sender restarted its sequence numbers.
            let consistent = self.wild_run > 0 && ext.abs_diff(self.last_wild) < CAPACITY as u64;
            self.wild_run = if consistent { self.wild_run + 1 } else { 1 };
            self.last_wild = ext;
            if self.wild_run < RESYNC_AFTER {
                return Err(if far_behind {
                    self.stats.late += 1;
                    DropReason::Late
                } else {
                    self.stats.too_far_ahead += 1;
                    DropReason::TooFarAhead
                });
            }
            self.stats.resyncs += 1;
            self.reset();
            ext = self.extend(seq);
        } else if ext < low {
            // Already played, or older than the ring can hold next to the newest packets.
            self.stats.late += 1;
            return Err(DropReason::Late);
        } else if far_ahead {
            // Buffering, and the sender jumped ahead: the newest packets win.
            let new_low = ext + 1 - CAPACITY as u64;
            self.evict_below(new_low);
            self.floor = self.floor.max(new_low);
        }
        self.wild_run = 0;
        let slot = &mut self.slots[Self::slot(ext)];
        match slot {
            Some(p) if p.ext_seq == ext => {
                self.stats.duplicate += 1;
                return Err(DropReason::Duplicate);
            }
            Some(_) => {} // a stale alias: replaced below (evictions should prevent this)
            None => self.buffered += 1,
        }
        *slot = Some(Packet {
            ext_seq: ext,
            rtp_timestamp,
            payload: payload.to_vec(),
            audio_level,
        });
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.stats.accepted += 1;
        Ok(())
    }

    fn reset(&mut self) {
        self.clear_slots();
        self.next = None;
        self.highest = None;
        self.floor = 0;
        self.concealed_run = 0;
        self.idle_ticks = 0;
    }

    fn clear_slots(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.buffered = 0;
    }

    fn evict_below(&mut self, low: u64) {
        for s in self.slots.iter_mut() {
            if s.as_ref().is_some_and(|p| p.ext_seq < low) {
                *s = None;
                self.buffered -= 1;
            }
        }
    }

    fn lowest_buffered(&self) -> Option<u64> {
        self.slots.iter().flatten().map(|p| p.ext_seq).min()
    }

    /// The playout decision for the next packet slot (call once per slot: per 20 ms for
    /// 20 ms packets).
    pub fn pop(&mut self) -> Playout<'_> {
        let n = match self.next {
            Some(n) => n,
            None => {
                if self.buffered == 0 {
                    self.idle_ticks = 0;
                    return Playout::Silent;
                }
                self.idle_ticks += 1;
                // Start once the target depth is reached, or once the first packet waited as
                // long as that depth would have taken (a short spurt must still play).
                if (self.buffered as u32) < self.target && self.idle_ticks <= self.target {
                    return Playout::Silent;
                }
                let Some(low) = self.lowest_buffered() else {
                    return Playout::Silent;
                };
                self.idle_ticks = 0;
                low
            }
        };
        // Too deep (the sender's clock runs fast, or a burst): skip ahead to the target depth.
        let n = match self.highest {
            Some(h) if h >= n && h - n >= 2 * u64::from(self.target) + 4 => {
                let resume = h + 1 - u64::from(self.target);
                for ext in n..resume {
                    if let Some(p) = self.slots[Self::slot(ext)].take_if(|p| p.ext_seq == ext) {
                        drop(p);
                        self.buffered -= 1;
                        self.stats.overflow_skipped += 1;
                    }
                }
                resume
            }
            _ => n,
        };
        self.next = Some(n + 1);
        self.floor = n + 1;
        if let Some(p) = self.slots[Self::slot(n)].take_if(|p| p.ext_seq == n) {
            self.buffered -= 1;
            self.concealed_run = 0;
            self.stats.played += 1;
            return Playout::Play(p);
        }
        self.concealed_run += 1;
        if self.buffered == 0 && self.concealed_run > self.max_concealed {
            // The talk spurt ended (or DTX): stop concealing, wait for new packets.
            self.next = None;
            self.concealed_run = 0;
            return Playout::Silent;
        }
        self.stats.concealed += 1;
        let next = self.slots[Self::slot(n + 1)]
            .as_ref()
            .filter(|p| p.ext_seq == n + 1);
        Playout::Conceal { next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn played(jb: &mut JitterBuffer) -> Option<u64> {
        match jb.pop() {
            Playout::Play(p) => Some(p.ext_seq - EXT_BASE),
            _ => None,
        }
    }

    #[test]
    fn reorders_and_plays_in_sequence() {
        let mut jb = JitterBuffer::new(2, 5);
        for seq in [3u16, 1, 2, 0, 5, 4] {
            jb.push(seq, u32::from(seq) * 960, &[seq as u8 + 1], None)
                .expect("accepted");
        }
        let order: Vec<_> = (0..6).map(|_| played(&mut jb)).collect();
        assert_eq!(order, (0..6).map(Some).collect::<Vec<_>>());
        assert_eq!(jb.pop(), Playout::Conceal { next: None });
    }

    #[test]
    fn waits_for_target_depth_then_starts() {
        let mut jb = JitterBuffer::new(3, 5);
        jb.push(10, 0, &[1], None).expect("accepted");
        assert_eq!(jb.pop(), Playout::Silent);
        jb.push(11, 960, &[1], None).expect("accepted");
        assert_eq!(jb.pop(), Playout::Silent);
        jb.push(12, 1920, &[1], None).expect("accepted");
        assert_eq!(played(&mut jb), Some(10));
    }

    #[test]
    fn a_lone_short_spurt_still_plays_after_the_target_wait() {
        let mut jb = JitterBuffer::new(2, 5);
        jb.push(7, 0, &[1], None).expect("accepted");
        assert_eq!(jb.pop(), Playout::Silent);
        assert_eq!(jb.pop(), Playout::Silent);
        assert_eq!(played(&mut jb), Some(7));
    }

    #[test]
    fn loss_is_concealed_with_fec_from_the_next_packet() {
        let mut jb = JitterBuffer::new(2, 5);
        for seq in [0u16, 1, 3] {
            jb.push(seq, 0, &[seq as u8 + 1], None).expect("accepted");
        }
        assert_eq!(played(&mut jb), Some(0));
        assert_eq!(played(&mut jb), Some(1));
        match jb.pop() {
            Playout::Conceal { next: Some(p) } => assert_eq!(p.payload, vec![4]),
            other => panic!("expected FEC concealment, got {other:?}"),
        }
        assert_eq!(played(&mut jb), Some(3));
        // The lost packet arriving now is late.
        assert_eq!(jb.push(2, 0, &[3], None), Err(DropReason::Late));
        // The stream stops: a few concealed frames, then silence.
        let mut conceal = 0;
        while let Playout::Conceal { next: None } = jb.pop() {
            conceal += 1;
            assert!(conceal <= 5);
        }
        assert_eq!(conceal, 5);
        assert_eq!(jb.pop(), Playout::Silent);
        assert_eq!(jb.stats().concealed, 6);
    }

    #[test]
    fn duplicates_and_empty_or_huge_payloads_are_dropped() {
        let mut jb = JitterBuffer::new(2, 5);
        jb.push(1, 0, &[1], None).expect("accepted");
        assert_eq!(jb.push(1, 0, &[1], None), Err(DropReason::Duplicate));
        assert_eq!(jb.push(2, 0, &[], None), Err(DropReason::InvalidPayload));
        assert_eq!(
            jb.push(2, 0, &vec![0; MAX_PAYLOAD + 1], None),
            Err(DropReason::InvalidPayload)
        );
        assert_eq!(jb.len(), 1);
        let s = jb.stats();
        assert_eq!((s.duplicate, s.invalid, s.accepted), (1, 2, 1));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut jb = JitterBuffer::new(2, 5);
        for seq in [65534u16, 65535, 0, 1] {
            jb.push(seq, 0, &[1], None).expect("accepted");
        }
        let order: Vec<_> = (0..4).filter_map(|_| played(&mut jb)).collect();
        assert_eq!(order, vec![65534, 65535, 65536, 65537]);
    }

    #[test]
    fn flood_and_wild_jumps_stay_bounded() {
        let mut jb = JitterBuffer::new(2, 5);
        let mut seed = 99u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed
        };
        for round in 0..20_000 {
            let seq = rnd() as u16;
            let _ = jb.push(seq, rnd(), &[1, 2, 3], Some((rnd() % 128) as u8));
            assert!(jb.len() <= CAPACITY);
            if round % 7 == 0 {
                let _ = jb.pop();
            }
        }
        // A well-behaved stream after the flood still plays once it resyncs.
        let mut played_any = false;
        for i in 0..40u16 {
            let _ = jb.push(30_000 + i, 0, &[9], None);
            if matches!(jb.pop(), Playout::Play(_)) {
                played_any = true;
            }
        }
        assert!(played_any);
    }

    #[test]
    fn a_single_wild_packet_does_not_derail_playout() {
        let mut jb = JitterBuffer::new(1, 5);
        jb.push(100, 0, &[1], None).expect("accepted");
        assert_eq!(played(&mut jb), Some(100));
        assert_eq!(jb.push(20_000, 0, &[1], None), Err(DropReason::TooFarAhead));
        jb.push(101, 0, &[1], None).expect("accepted");
        assert_eq!(played(&mut jb), Some(101));
        // A sender restart (a run of consistent far-ahead packets) resyncs.
        assert_eq!(jb.push(40_000, 0, &[1], None), Err(DropReason::Late));
        assert_eq!(jb.push(40_001, 0, &[1], None), Err(DropReason::Late));
        jb.push(40_002, 0, &[1], None).expect("resynced");
        jb.push(40_003, 0, &[1], None).expect("accepted");
        assert_eq!(played(&mut jb), Some(40_002));
        assert_eq!(jb.stats().resyncs, 1);
    }

    #[test]
    fn a_buffer_that_grows_too_deep_skips_ahead() {
        let mut jb = JitterBuffer::new(2, 5);
        for seq in 0..30u16 {
            jb.push(seq, 0, &[1], None).expect("accepted");
        }
        let first = played(&mut jb).expect("plays");
        assert_eq!(first, 29 + 1 - 2);
        assert!(jb.stats().overflow_skipped > 20);
    }
}
