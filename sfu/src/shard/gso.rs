//! UDP segmentation offload (Linux `UDP_SEGMENT`, kernel 4.18 and later): datagrams to one
//! destination leave as one message that crosses the UDP and IP layers once; the kernel, or
//! the network card, cuts it back into the same datagrams on the way out. A packet fanned out
//! to a room goes to many destinations, but a video frame's packets reach each subscriber in
//! a run of equal sizes, so a batch holds runs worth sending whole.
//!
//! The rule the kernel sets: every segment but the last is exactly the segment size, the last
//! may be shorter. Datagrams to one destination keep their order; the order between
//! destinations is free (they are different flows).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// Segments per message: the kernel's `UDP_MAX_SEGMENTS` before 6.x raised it.
pub const MAX_SEGMENTS: usize = 64;
/// Bytes per message: an IPv6 payload's limit less the UDP header, with room to spare.
const MAX_MESSAGE_BYTES: usize = 65_000;

/// Room for one `UDP_SEGMENT` control message (`CMSG_SPACE(sizeof(u16))` is 24 on 64-bit).
#[repr(C, align(8))]
pub struct Control([u8; 32]);

impl Control {
    pub const fn new() -> Self {
        Control([0; 32])
    }
}

/// Does this socket take `UDP_SEGMENT`? (It reads back as 0 where the kernel knows it.)
pub fn supported(socket: &impl AsRawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd and an out-parameter of the right size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0
}

/// Errors that say this socket's path cannot segment (no checksum offload on the device:
/// EIO; a segment larger than the path's MTU: EINVAL): send one datagram per message from
/// then on.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// `order` becomes the queue's indices sorted by destination, each destination's datagrams
/// in the order they were queued. No allocation once `order` has grown to the batch.
pub fn order_by_destination(queued: &[(SocketAddr, BytesMut)], order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..queued.len() as u32);
    // The index breaks ties, so an unstable (allocation-free) sort keeps the order.
    order.sort_unstable_by(|&a, &b| {
        queued[a as usize]
            .0
            .cmp(&queued[b as usize].0)
            .then(a.cmp(&b))
    });
}

/// How many datagrams, from `order[from]` on, go in one message: a run to one destination,
/// all of the first one's size but the last, which may be shorter; at most `max_segments`.
pub fn message_len(
    queued: &[(SocketAddr, BytesMut)],
    order: &[u32],
    from: usize,
    max_segments: usize,
) -> usize {
    let (to, first) = &queued[order[from] as usize];
    let size = first.len();
    let mut bytes = size;
    let mut len = 1;
    while len < max_segments && from + len < order.len() {
        let (next_to, next) = &queued[order[from + len] as usize];
        if next_to != to || next.len() > size || bytes + next.len() > MAX_MESSAGE_BYTES {
            break;
        }
        bytes += next.len();
        len += 1;
        if next.len() < size {
            // A shorter segment can only be the last.
            break;
        }
    }
    len
}

/// Point `header`'s control at `control`, holding a `UDP_SEGMENT` of `size` bytes.
///
/// # Safety
/// `control` must outlive every use of `header`.
pub unsafe fn set_segment_size(header: &mut libc::msghdr, control: &mut Control, size: u16) {
    header.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: the buffer is 8-aligned and at least CMSG_SPACE(2) bytes long.
    unsafe {
        header.msg_controllen = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(header);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(items: &[(u16, usize)]) -> Vec<(SocketAddr, BytesMut)> {
        items
            .iter()
            .map(|&(port, len)| {
                (
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    BytesMut::from(&vec![0u8; len][..]),
                )
            })
            .collect()
    }

    fn messages(q: &[(SocketAddr, BytesMut)], max: usize) -> Vec<Vec<u32>> {
        let mut order = Vec::new();
        order_by_destination(q, &mut order);
        let mut out = Vec::new();
        let mut at = 0;
        while at < order.len() {
            let n = message_len(q, &order, at, max);
            out.push(order[at..at + n].to_vec());
            at += n;
        }
        out
    }

    #[test]
    fn a_frame_fanned_out_leaves_as_one_message_per_subscriber() {
        // Three packets of a frame (two full, one short) to subscribers on ports 2 and 1.
        let q = queue(&[
            (2, 1200),
            (1, 1200),
            (2, 1200),
            (1, 1200),
            (2, 700),
            (1, 700),
        ]);
        assert_eq!(
            messages(&q, MAX_SEGMENTS),
            vec![vec![1, 3, 5], vec![0, 2, 4]]
        );
    }

    #[test]
    fn only_the_last_segment_may_be_shorter() {
        // 1200, 700 | 1200, 900 (a shorter one ends a message) | 1000, 1000 | 1200 (a longer
        // one starts the next).
        let q = queue(&[
            (1, 1200),
            (1, 700),
            (1, 1200),
            (1, 900),
            (1, 1000),
            (1, 1000),
            (1, 1200),
        ]);
        assert_eq!(
            messages(&q, MAX_SEGMENTS),
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6]]
        );
    }

    #[test]
    fn messages_keep_to_the_segment_and_byte_limits() {
        let q = queue(&[(1, 100); 10]);
        assert_eq!(
            messages(&q, 4).iter().map(Vec::len).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        assert_eq!(messages(&q, 1).len(), 10);
        let big = queue(&[(1, 1400); 60]);
        let lens: Vec<usize> = messages(&big, MAX_SEGMENTS).iter().map(Vec::len).collect();
        assert_eq!(lens, [46, 14]);
        assert!(46 * 1400 <= MAX_MESSAGE_BYTES && 47 * 1400 > MAX_MESSAGE_BYTES);
    }
}
