//! The sender's clock, carried inside the media: the last bytes of an Opus packet's padding
//! or of a VP8 frame's tail hold a magic tag and the send time. Senders and receivers of a
//! load run live in one process, so one clock measures the whole path through the SFU.

use std::sync::OnceLock;
use std::time::Instant;

const MAGIC: &[u8; 4] = b"MCts";
/// Bytes the marker occupies at the end of a payload.
pub const MARKER_LEN: usize = 12;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds on the process clock.
pub fn now_micros() -> u64 {
    Instant::now().duration_since(epoch()).as_micros() as u64
}

/// The process-clock reading of an instant.
pub fn micros_at(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_micros() as u64
}

/// Write the marker into the last [`MARKER_LEN`] bytes of `buf`.
pub fn write(buf: &mut [u8], micros: u64) {
    let n = buf.len();
    if n < MARKER_LEN {
        return;
    }
    buf[n - MARKER_LEN..n - 8].copy_from_slice(MAGIC);
    buf[n - 8..].copy_from_slice(&micros.to_be_bytes());
}

/// The send time a payload carries, if it carries one.
pub fn read(payload: &[u8]) -> Option<u64> {
    let n = payload.len();
    if n < MARKER_LEN || &payload[n - MARKER_LEN..n - 8] != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(payload[n - 8..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_absent_ones_are_not_invented() {
        let mut b = vec![7u8; 40];
        write(&mut b, 123_456_789);
        assert_eq!(read(&b), Some(123_456_789));
        assert_eq!(read(&[7u8; 40]), None);
        assert_eq!(read(&[1, 2]), None);
        assert!(now_micros() < now_micros() + 1);
    }
}
