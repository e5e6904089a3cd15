//! A subscriber's gap-free sequence numbers, whatever the SFU drops on purpose.

use std::collections::VecDeque;

use super::seq_is_newer;

/// How many deliberate drops are remembered to map late packets correctly. Older drops fold
/// into the base offset, and packets older than the oldest remembered drop are refused.
const REMEMBERED_DROPS: usize = 64;

/// Maps a publisher's sequence numbers to a subscriber's gap-free ones.
#[derive(Debug, Clone)]
pub struct SeqMapper {
    /// Added to an input sequence number that follows every remembered drop.
    offset: u16,
    /// The first input forwarded; anything older is from before the subscription started.
    first_in: u16,
    highest_in: u16,
    /// Inputs dropped on purpose, oldest first.
    dropped: VecDeque<u16>,
}

impl SeqMapper {
    pub fn new(first_in: u16, first_out: u16) -> Self {
        Self {
            offset: first_out.wrapping_sub(first_in),
            first_in,
            highest_in: first_in,
            dropped: VecDeque::new(),
        }
    }

    /// Record that `seq` will not be forwarded; later packets move down by one.
    pub fn skip(&mut self, seq: u16) {
        if !seq_is_newer(seq, self.first_in) || self.dropped.contains(&seq) {
            return;
        }
        if seq_is_newer(seq, self.highest_in) {
            self.highest_in = seq;
        }
        let at = self
            .dropped
            .iter()
            .position(|&d| seq_is_newer(d, seq))
            .unwrap_or(self.dropped.len());
        self.dropped.insert(at, seq);
        if self.dropped.len() > REMEMBERED_DROPS {
            // Fold the oldest drop into the base: from now on it is too old to matter, and
            // `map` refuses anything older than the oldest drop still remembered.
            self.dropped.pop_front();
            self.offset = self.offset.wrapping_sub(1);
            if let Some(&oldest) = self.dropped.front() {
                self.first_in = oldest;
            }
        }
    }

    /// The subscriber's sequence number for input `seq`, or `None` when it is older than
    /// what this mapping can place.
    pub fn map(&mut self, seq: u16) -> Option<u16> {
        if seq != self.first_in && !seq_is_newer(seq, self.first_in) {
            return None;
        }
        if self.dropped.contains(&seq) {
            return None;
        }
        if seq_is_newer(seq, self.highest_in) {
            self.highest_in = seq;
        }
        let later_drops = self
            .dropped
            .iter()
            .rev()
            .take_while(|&&d| seq_is_newer(d, seq))
            .count();
        Some(
            seq.wrapping_add(self.offset)
                .wrapping_sub((self.dropped.len() - later_drops) as u16),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_drops_fold_into_the_base() {
        let mut m = SeqMapper::new(0, 0);
        for s in 1..=200u16 {
            if s % 2 == 0 {
                m.skip(s);
            } else {
                assert_eq!(m.map(s), Some(s / 2 + 1), "input {s}");
            }
        }
        // Across the 16-bit wrap as well.
        let mut m = SeqMapper::new(65530, 10);
        m.skip(65534);
        assert_eq!(m.map(65535), Some(14));
        assert_eq!(m.map(0), Some(15));
        assert_eq!(m.map(65533), Some(13));
    }
}
