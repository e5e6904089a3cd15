//! Where a packet sits in its stream: the 48-bit SRTP index (rollover counter and sequence
//! number, RFC 3711 §3.3.1) guessed from a 16-bit sequence number, and the replay window
//! for what we receive.

/// Packets behind the newest one that can still be accepted once. libsrtp's window is 128
/// too: a publisher's retransmission, up to a second late, stays inside it at video rates.
const REPLAY_WINDOW: u64 = 128;

/// The largest SRTP index (2^48 - 1): after it the key must not be used again.
const MAX_INDEX: u64 = (1 << 48) - 1;

/// One stream's position: the highest index seen so far.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamIndex {
    highest: u64,
}

impl StreamIndex {
    /// A stream whose first packet carries `sequence_number` (rollover counter zero).
    pub(super) fn starting_at(sequence_number: u16) -> Self {
        Self {
            highest: u64::from(sequence_number),
        }
    }

    /// A stream already under way, whose latest packet had `index` (its first packets were
    /// opened elsewhere).
    pub(super) fn resuming_at(index: u64) -> Self {
        Self {
            highest: index.min(MAX_INDEX),
        }
    }

    /// The index of a packet with `sequence_number`: the one closest to the highest so far
    /// (RFC 3711 §3.3.1's estimate, as a signed 16-bit distance). `None` when it would fall
    /// before the stream began or past the last index the key allows.
    pub(super) fn guess(&self, sequence_number: u16) -> Option<u64> {
        let distance = sequence_number.wrapping_sub(self.highest as u16) as i16;
        let index = self.highest.checked_add_signed(i64::from(distance))?;
        (index <= MAX_INDEX).then_some(index)
    }

    /// Remember `index` as sent or received (after it was authenticated).
    pub(super) fn advance(&mut self, index: u64) {
        self.highest = self.highest.max(index);
    }
}

/// The rollover counter of `index`.
pub(super) fn rollover(index: u64) -> u32 {
    (index >> 16) as u32
}

/// Which of the last `REPLAY_WINDOW` indices arrived: bit `i` is `highest - i`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayWindow {
    highest: u64,
    seen: u128,
}

/// Why a received index is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    Duplicate,
    TooOld,
}

impl ReplayWindow {
    pub(super) fn starting_at(index: u64) -> Self {
        Self {
            highest: index,
            seen: 1,
        }
    }

    /// May a packet with `index` be accepted? Checked before it is authenticated and
    /// recorded (with `accept`) only after.
    pub(super) fn check(&self, index: u64) -> Result<(), Replay> {
        if index > self.highest {
            return Ok(());
        }
        let behind = self.highest - index;
        if behind >= REPLAY_WINDOW {
            Err(Replay::TooOld)
        } else if self.seen & (1 << behind) != 0 {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    pub(super) fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.seen = if ahead >= REPLAY_WINDOW {
                1
            } else {
                (self.seen << ahead) | 1
            };
            self.highest = index;
        } else {
            self.seen |= 1 << (self.highest - index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_across_a_sequence_number_wrap() {
        let mut stream = StreamIndex::starting_at(65_530);
        let index = stream.guess(3).unwrap();
        assert_eq!((rollover(index), index as u16), (1, 3));
        stream.advance(index);
        // A late packet from before the wrap keeps the old rollover counter.
        let late = stream.guess(65_534).unwrap();
        assert_eq!(rollover(late), 0);
        stream.advance(late);
        assert_eq!(stream.guess(4), Some(index + 1));
    }

    #[test]
    fn refuses_an_index_before_the_stream_began() {
        let stream = StreamIndex::starting_at(10);
        assert_eq!(stream.guess(65_000), None);
        assert_eq!(stream.guess(9), Some(9));
    }

    #[test]
    fn replay_window_accepts_each_index_once_and_forgets_the_old() {
        let mut window = ReplayWindow::starting_at(1_000);
        assert_eq!(window.check(1_000), Err(Replay::Duplicate));
        assert_eq!(window.check(999), Ok(()));
        window.accept(999);
        assert_eq!(window.check(999), Err(Replay::Duplicate));
        window.accept(1_200);
        assert_eq!(window.check(1_000), Err(Replay::TooOld));
        assert_eq!(window.check(1_073), Ok(()));
        assert_eq!(window.check(1_072), Err(Replay::TooOld));
        window.accept(1_073);
        assert_eq!(window.check(1_073), Err(Replay::Duplicate));
        assert_eq!(window.check(1_201), Ok(()));
    }
}
