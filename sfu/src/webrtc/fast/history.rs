//! What one outgoing stream sent lately, kept to answer NACKs: each packet's header as
//! written and its payload, which is the publisher's and shared by every subscriber (the
//! ring holds a reference, not a copy).
//!
//! A resend is the packet exactly as first sent, transport-wide sequence number included:
//! SRTP protects it under the same packet index, and with AES-GCM the same index over a
//! different header would reuse a nonce (RFC 7714 §8.1 forbids it). libwebrtc's sender
//! repeats packets the same way when it has no RTX stream.

use bytes::Bytes;

use super::header::MAX_HEADER;

/// One packet as sent, before SRTP.
pub(super) struct SentPacket {
    sequence_number: u16,
    header: [u8; MAX_HEADER],
    header_len: u8,
    payload: Bytes,
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
}

impl ResendHistory {
    /// Allocated once, when the stream's first packet goes out.
    pub fn new(capacity: u16) -> Self {
        ResendHistory {
            slots: (0..capacity.max(1)).map(|_| None).collect(),
        }
    }

    fn slot(&self, sequence_number: u16) -> usize {
        usize::from(sequence_number) % self.slots.len()
    }

    /// Keeps a packet, replacing the one `capacity` sequence numbers before it.
    pub fn keep(&mut self, sequence_number: u16, header: &[u8], payload: &Bytes) {
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
        });
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
        for seq in [65534u16, 65535, 0, 1, 2] {
            h.keep(seq, &[0x80, 96, (seq >> 8) as u8, seq as u8], &payload);
        }
        assert!(h.get(65534).is_none(), "pushed out by 2");
        for seq in [65535u16, 0, 1, 2] {
            let p = h.get(seq).expect("held");
            assert_eq!(p.header()[2..4], seq.to_be_bytes());
            assert_eq!(p.payload().as_ref(), b"media");
        }
        assert!(h.get(3).is_none(), "never sent");
    }
}
