//! What one outgoing stream sent lately, kept to answer NACKs: each packet's header as
//! written and its payload, which is the publisher's and shared by every subscriber (the
//! ring holds a reference, not a copy).
//!
//! A resend is the packet exactly as first sent, transport-wide sequence number included:
//! SRTP protects it under the same packet index, and with AES-GCM the same index over a
//! different header would reuse a nonce (RFC 7714 §8.1 forbids it). libwebrtc's sender
//! repeats packets the same way when it has no RTX stream.
//!
//! A packet is held for `MAX_AGE` at most, whatever the ring's size: a resend later than
//! that comes after the receiver gave up on it, and at low bitrates the ring alone would
//! keep several seconds of the publisher's payloads alive for nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::header::MAX_HEADER;

/// How long a packet may still be asked for: libwebrtc keeps its own for a second at least
/// (three round trips on slower paths); 1.5 s covers a round trip of 500 ms to a patient
/// abroad three times over.
const MAX_AGE: Duration = Duration::from_millis(1500);
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

/// The last `capacity` packets of one SSRC, by sequence number.
pub(super) struct ResendHistory {
    slots: Box<[Option<SentPacket>]>,
    /// The oldest sequence number that may still be held.
    oldest: Option<u16>,
}

impl ResendHistory {
    /// Allocated once, when the stream's first packet goes out.
    pub fn new(capacity: u16) -> Self {
        ResendHistory {
            slots: (0..capacity.max(1)).map(|_| None).collect(),
            oldest: None,
        }
    }

    fn slot(&self, sequence_number: u16) -> usize {
        usize::from(sequence_number) % self.slots.len()
    }

    /// Keeps a packet sent at `now`, replacing the one `capacity` sequence numbers before
    /// it, and lets go of the oldest ones past `MAX_AGE`.
    pub fn keep(&mut self, now: Instant, sequence_number: u16, header: &[u8], payload: &Bytes) {
        let i = self.slot(sequence_number);
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
        self.let_go(now, sequence_number);
    }

    /// Lets go of the oldest packets past `MAX_AGE`, a few at a time (`newest` was just
    /// kept: everything held is between the oldest and it).
    fn let_go(&mut self, now: Instant, newest: u16) {
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
                    if now.saturating_duration_since(p.sent_at) <= MAX_AGE {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_last_packets_and_forgets_older_ones() {
        let mut h = ResendHistory::new(4);
        let payload = Bytes::from_static(b"media");
        let now = Instant::now();
        for seq in [65534u16, 65535, 0, 1, 2] {
            h.keep(now, seq, &[0x80, 96, (seq >> 8) as u8, seq as u8], &payload);
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
        // A slow stream: 10 packets a second for 5 s.
        for seq in 0..50u16 {
            let now = start + Duration::from_millis(100 * u64::from(seq));
            h.keep(now, seq, &[0x80, 96, 0, seq as u8], &payload);
        }
        let held: Vec<u16> = (0..50).filter(|&s| h.get(s).is_some()).collect();
        // The newest 1.5 s (and never more than the sweep leaves behind).
        assert!(held.len() <= 17, "{held:?}");
        assert!(held.contains(&49) && held.contains(&35), "{held:?}");
        // Only the ring's references to the payload remain, besides ours.
        assert!(!payload.is_unique());
    }
}
