//! The memory datagrams are written into: a few slabs, each cut into datagrams (which share
//! it) and taken back whole once the media thread has sent and dropped them. After a call's
//! first moments there are as many slabs as its busiest turn keeps in flight, and writing a
//! datagram allocates nothing.

use bytes::BytesMut;

/// What is sent: one slab is several packets' worth.
const SLAB_BYTES: usize = 4 * 1024;
/// Slabs kept per connection for what is sent, at most (a turn with more in flight
/// allocates a spare one).
const MAX_SLABS: usize = 8;

pub(super) struct Datagrams {
    slabs: Vec<BytesMut>,
    current: usize,
    slab_bytes: usize,
    max_slabs: usize,
}

impl Default for Datagrams {
    fn default() -> Self {
        Self::new(SLAB_BYTES, MAX_SLABS)
    }
}

impl Datagrams {
    /// Slabs of `slab_bytes`, at most `max_slabs` of them kept.
    pub fn new(slab_bytes: usize, max_slabs: usize) -> Self {
        Datagrams {
            slabs: Vec::new(),
            current: 0,
            slab_bytes,
            max_slabs: max_slabs.max(1),
        }
    }

    /// An empty buffer with room for `len` bytes, cut from a slab (see [`BytesMut::split_to`]).
    pub fn buffer(&mut self, len: usize) -> &mut BytesMut {
        let n = self.slabs.len();
        for k in 0..n {
            let i = (self.current + k) % n;
            let slab = &mut self.slabs[i];
            slab.clear();
            // Room left, or every datagram cut from it is gone and it starts again.
            if slab.capacity() >= len || slab.try_reclaim(len) {
                self.current = i;
                return &mut self.slabs[i];
            }
        }
        let slab = BytesMut::with_capacity(self.slab_bytes.max(len));
        if n < self.max_slabs {
            self.slabs.push(slab);
            self.current = n;
        } else {
            self.slabs[self.current] = slab;
        }
        &mut self.slabs[self.current]
    }

    /// Lets go of the slabs no datagram uses any more, but `spare` of them: a burst (a key
    /// frame, a call's first second before its round trip is known) leaves more slabs than
    /// the steady flow needs, and they would stay for the whole call. Called once a second;
    /// the flow's own slabs come free as fast as it needs new ones, so it does not allocate.
    pub fn release_spare(&mut self, spare: usize) {
        let slab_bytes = self.slab_bytes;
        let mut free = 0;
        self.slabs.retain_mut(|slab| {
            slab.clear();
            if !slab.try_reclaim(slab_bytes) {
                return true;
            }
            free += 1;
            free <= spare
        });
        if self.current >= self.slabs.len() {
            self.current = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(d: &mut Datagrams, len: usize, fill: u8) -> BytesMut {
        let b = d.buffer(len);
        b.resize(len, fill);
        b.split_to(len)
    }

    #[test]
    fn slabs_are_reused_once_their_datagrams_are_gone() {
        let mut d = Datagrams::default();
        // Three in flight at a time, 1200 bytes each, for a while.
        let mut in_flight = std::collections::VecDeque::new();
        for i in 0..1000 {
            in_flight.push_back(cut(&mut d, 1200, i as u8));
            if in_flight.len() > 3 {
                let old = in_flight.pop_front().unwrap();
                assert!(
                    old.iter().all(|&b| b == old[0]),
                    "a datagram was overwritten"
                );
            }
        }
        assert!(
            d.slabs.len() <= 2,
            "{} slabs for 3 datagrams in flight",
            d.slabs.len()
        );
    }

    #[test]
    fn slabs_a_burst_left_free_are_let_go_but_the_spares() {
        let mut d = Datagrams::default();
        // A burst: 40 datagrams in flight at once, then all sent.
        let burst: Vec<BytesMut> = (0..40).map(|i| cut(&mut d, 1200, i)).collect();
        assert_eq!(d.slabs.len(), d.max_slabs);
        let held = cut(&mut d, 1200, 99);
        drop(burst);
        d.release_spare(2);
        // The slab under the datagram still held stays, and two free ones.
        assert_eq!(d.slabs.len(), 3);
        assert!(held.iter().all(|&b| b == 99));
        // And it goes on cutting from what is left.
        let next = cut(&mut d, 1200, 7);
        assert!(next.iter().all(|&b| b == 7) && d.slabs.len() == 3);
    }

    #[test]
    fn a_datagram_larger_than_a_slab_gets_its_own() {
        let mut d = Datagrams::default();
        let big = cut(&mut d, SLAB_BYTES * 2, 1);
        assert_eq!(big.len(), SLAB_BYTES * 2);
        let small = cut(&mut d, 100, 2);
        assert_eq!(small.len(), 100);
        assert!(d.slabs.len() <= d.max_slabs);
    }
}
