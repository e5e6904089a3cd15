//! What one outgoing stream sent lately, kept to answer NACKs: each packet's header as
//! written and its payload, which is the publisher's and shared by every subscriber (the
//! ring holds a reference, not a copy).
//!
//! A resend is the packet exactly as first sent, transport-wide sequence number included:
//! SRTP protects it under the same packet index, and with AES-GCM the same index over a
//! different header would reuse a nonce (RFC 7714 §8.1 forbids it). libwebrtc's sender
//! repeats packets the same way when it has no RTX stream.
//!
//! A packet is held for [`resend_age`] at most, whatever the ring's size: a resend later
//! than that comes after the receiver gave up on it, and at low bitrates the ring alone would
//! keep several seconds of the publisher's payloads alive for nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::header::MAX_HEADER;

/// Held this long at least: three tries on a 200 ms round trip (a receiver on a shorter path
/// has asked its ten times and given up on the packet well before), and the same until the
/// first receiver report measures the path (a second or two into a call, where a longer
/// path's first losses are recovered by a keyframe instead). libwebrtc holds its own for a
/// second at least; at that, a node's memory per participant was a tenth higher.
const MIN_AGE: Duration = Duration::from_millis(600);
/// And never longer (a round trip of a second: a satellite link to a ship).
const MAX_AGE: Duration = Duration::from_secs(3);

/// How long a packet may still be asked for on a path with round trip `rtt`: three round
/// trips (a NACK, its answer, and two more tries), as libwebrtc's sender keeps its own.
pub(super) fn resend_age(rtt: Option<Duration>) -> Duration {
    rtt.map_or(MIN_AGE, |rtt| rtt.saturating_mul(3).clamp(MIN_AGE, MAX_AGE))
}
/// Oldest packets looked at per packet kept: more than one, so that what has aged out is
/// let go faster than packets come.
const SWEEP: usize = 2;

/// One packet as sent, before SRTP.
pub(super) struct SentPacket {
    sequence_number: u16,
    header: [u8; MAX_HEADER],
    header_len: u8,
    payload: Bytes,
    sent_at: Instant,
}

impl SentPacket {
    /// The header as sent.
    pub fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// Slots a stream's history starts with: a second of a 300 kbit/s camera.
const FIRST_SLOTS: usize = 32;

/// The last packets of one SSRC, by sequence number: as many slots as the stream sends in
/// its resend age, up to `capacity`. The ring doubles when a packet would push out one still
/// young enough to be asked for, so a low-rate stream keeps a small ring and a fast one grows
/// to the cap in its first second (and never allocates after).
pub(super) struct ResendHistory {
    slots: Box<[Option<SentPacket>]>,
    /// The most slots the ring may grow to (a power of two).
    max_slots: usize,
    /// The oldest sequence number that may still be held.
    oldest: Option<u16>,
}

impl ResendHistory {
    /// Allocated when the stream's first packet goes out; at most `capacity` packets kept.
    pub fn new(capacity: u16) -> Self {
        let max_slots = usize::from(capacity.max(1)).next_power_of_two();
        ResendHistory {
            slots: empty_slots(FIRST_SLOTS.min(max_slots)),
            max_slots,
            oldest: None,
        }
    }

    fn slot(&self, sequence_number: u16) -> usize {
        usize::from(sequence_number) % self.slots.len()
    }

    /// Twice the slots, each packet held moved to its new place (the packets held span
    /// fewer sequence numbers than the old ring, so none collide in the new one).
    fn grow(&mut self) {
        let len = (self.slots.len() * 2).min(self.max_slots);
        let old = std::mem::replace(&mut self.slots, empty_slots(len));
        for p in old.into_vec().into_iter().flatten() {
            let i = self.slot(p.sequence_number);
            self.slots[i] = Some(p);
        }
    }

    /// Keeps a packet sent at `now`, replacing the one `capacity` sequence numbers before
    /// it, and lets go of the oldest ones held longer than `max_age`.
    pub fn keep(
        &mut self,
        now: Instant,
        max_age: Duration,
        sequence_number: u16,
        header: &[u8],
        payload: &Bytes,
    ) {
        let mut i = self.slot(sequence_number);
        if self.slots.len() < self.max_slots
            && self.slots[i].as_ref().is_some_and(|p| {
                p.sequence_number != sequence_number
                    && now.saturating_duration_since(p.sent_at) <= max_age
            })
        {
            self.grow();
            i = self.slot(sequence_number);
        }
        let Some(len) = u8::try_from(header.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_HEADER)
        else {
            self.slots[i] = None;
            return;
        };
        let mut copy = [0u8; MAX_HEADER];
        copy[..header.len()].copy_from_slice(header);
        self.slots[i] = Some(SentPacket {
            sequence_number,
            header: copy,
            header_len: len,
            payload: payload.clone(),
            sent_at: now,
        });
        self.let_go(now, max_age, sequence_number);
    }

    /// Lets go of the oldest packets past `max_age`, a few at a time (`newest` was just
    /// kept: everything held is between the oldest and it).
    fn let_go(&mut self, now: Instant, max_age: Duration, newest: u16) {
        let capacity = self.slots.len();
        let oldest = self.oldest.get_or_insert(newest);
        if usize::from(newest.wrapping_sub(*oldest)) >= capacity {
            *oldest = newest.wrapping_sub(capacity as u16 - 1);
        }
        for _ in 0..SWEEP {
            let seq = *oldest;
            if seq == newest {
                return;
            }
            let i = usize::from(seq) % capacity;
            match &self.slots[i] {
                Some(p) if p.sequence_number == seq => {
                    if now.saturating_duration_since(p.sent_at) <= max_age {
                        // Everything after it was sent later.
                        return;
                    }
                    self.slots[i] = None;
                }
                // Never kept, or already replaced: nothing to let go.
                _ => {}
            }
            *oldest = seq.wrapping_add(1);
        }
    }

    /// The packet sent with `sequence_number`, if it is still held.
    pub fn get(&self, sequence_number: u16) -> Option<&SentPacket> {
        self.slots[self.slot(sequence_number)]
            .as_ref()
            .filter(|p| p.sequence_number == sequence_number)
    }
}

fn empty_slots(len: usize) -> Box<[Option<SentPacket>]> {
    (0..len).map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_last_packets_and_forgets_older_ones() {
        let mut h = ResendHistory::new(4);
        let payload = Bytes::from_static(b"media");
        let now = Instant::now();
        for seq in [65534u16, 65535, 0, 1, 2] {
            h.keep(
                now,
                MIN_AGE,
                seq,
                &[0x80, 96, (seq >> 8) as u8, seq as u8],
                &payload,
            );
        }
        assert!(h.get(65534).is_none(), "pushed out by 2");
        for seq in [65535u16, 0, 1, 2] {
            let p = h.get(seq).expect("held");
            assert_eq!(p.header()[2..4], seq.to_be_bytes());
            assert_eq!(p.payload().as_ref(), b"media");
        }
        assert!(h.get(3).is_none(), "never sent");
    }

    #[test]
    fn packets_past_their_age_are_let_go_even_when_the_ring_has_room() {
        let mut h = ResendHistory::new(128);
        let payload = Bytes::from(vec![7u8; 1000]);
        let start = Instant::now();
        // A slow stream: 10 packets a second for 5 s, on a path with a 500 ms round trip.
        let age = resend_age(Some(Duration::from_millis(500)));
        assert_eq!(age, Duration::from_millis(1500));
        for seq in 0..50u16 {
            let now = start + Duration::from_millis(100 * u64::from(seq));
            h.keep(now, age, seq, &[0x80, 96, 0, seq as u8], &payload);
        }
        let held: Vec<u16> = (0..50).filter(|&s| h.get(s).is_some()).collect();
        // The newest 1.5 s (and never more than the sweep leaves behind).
        assert!(held.len() <= 17, "{held:?}");
        assert!(held.contains(&49) && held.contains(&35), "{held:?}");
        // Only the ring's references to the payload remain, besides ours.
        assert!(!payload.is_unique());
    }

    #[test]
    fn the_ring_grows_to_the_stream_s_rate_and_no_further() {
        let payload = Bytes::from_static(b"media");
        let start = Instant::now();
        let fill = |h: &mut ResendHistory, per_second: u64, packets: u16| {
            for seq in 0..packets {
                let now = start + Duration::from_micros(1_000_000 * u64::from(seq) / per_second);
                h.keep(
                    now,
                    Duration::from_secs(1),
                    seq,
                    &[0x80, 96, 0, seq as u8],
                    &payload,
                );
            }
        };
        // 25 packets a second: a second of them fits the first ring.
        let mut slow = ResendHistory::new(128);
        fill(&mut slow, 25, 200);
        assert_eq!(slow.slots.len(), FIRST_SLOTS);
        // 100 a second: grows to 128 and holds the last second, every packet where it was.
        let mut fast = ResendHistory::new(128);
        fill(&mut fast, 100, 300);
        assert_eq!(fast.slots.len(), 128);
        assert!((200..300).all(|s| fast.get(s).is_some_and(|p| p.header()[3] == s as u8)));
        // 1000 a second: capped, the last 128 held.
        let mut capped = ResendHistory::new(128);
        fill(&mut capped, 1000, 1000);
        assert_eq!(capped.slots.len(), 128);
        assert!(capped.get(871).is_none() && (872..1000).all(|s| capped.get(s).is_some()));
    }

    #[test]
    fn packets_are_held_for_three_round_trips_and_a_little_more_on_short_paths() {
        assert_eq!(resend_age(None), MIN_AGE);
        assert_eq!(resend_age(Some(Duration::from_millis(40))), MIN_AGE);
        assert_eq!(
            resend_age(Some(Duration::from_millis(400))),
            Duration::from_millis(1200)
        );
        assert_eq!(resend_age(Some(Duration::from_secs(5))), MAX_AGE);
        // Before the round trip is known, a packet a second and a half old is gone.
        let mut h = ResendHistory::new(128);
        let payload = Bytes::from_static(b"media");
        let start = Instant::now();
        for seq in 0..20u16 {
            let now = start + Duration::from_millis(100 * u64::from(seq));
            h.keep(
                now,
                resend_age(None),
                seq,
                &[0x80, 96, 0, seq as u8],
                &payload,
            );
        }
        assert!(h.get(4).is_none() && h.get(19).is_some());
    }
}
