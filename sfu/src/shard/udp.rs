//! Batched UDP I/O for a media thread: `recvmmsg` fills up to [`BATCH`] datagrams per system
//! call, `sendmmsg` sends up to [`BATCH`] to any mix of destinations. The syscalls, not the
//! crypto, dominate a forwarding node's CPU (see ../shared/notes); batching is the cure.
//!
//! Written on libc rather than nix: nix's `recvmmsg` ties every buffer to one call's lifetime
//! (an allocation per call) and leaves each header's address length from the previous call.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use bytes::BytesMut;

use super::gso;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Receive buffer per datagram. Anything larger is truncated by the kernel and reported.
pub const MAX_DATAGRAM: usize = 2048;
/// Datagrams waiting for a full socket buffer before new ones are dropped.
const MAX_QUEUED: usize = 4096;

/// One received datagram.
pub struct Received<'a> {
    pub from: SocketAddr,
    pub data: &'a [u8],
    /// Larger than [`MAX_DATAGRAM`]; `data` holds only the first part.
    pub truncated: bool,
}

pub struct RecvBatch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// The raw pointers inside point into the batch's own heap buffers, which never move.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new() -> Self {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zeroed_storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut b = RecvBatch {
            bufs: vec![[0u8; MAX_DATAGRAM]; BATCH],
            addrs: vec![zeroed_storage; BATCH],
            iovecs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
        };
        for i in 0..BATCH {
            b.iovecs.push(libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            });
        }
        for i in 0..BATCH {
            // SAFETY: zeroed msghdr is valid; the pointers set below outlive it.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = &mut b.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            b.headers.push(h);
        }
        b
    }

    /// Receive what is waiting (up to [`BATCH`]) and hand each datagram to `f`. Returns how
    /// many arrived; `Ok(0)` when none was waiting.
    pub fn recv(
        &mut self,
        socket: &impl AsRawFd,
        mut f: impl FnMut(Received<'_>),
    ) -> io::Result<usize> {
        for h in &mut self.headers {
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: headers point at BATCH valid iovecs, buffers and address slots.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.headers[i];
            let Some(from) = sockaddr_to_std(&self.addrs[i], h.msg_hdr.msg_namelen) else {
                continue;
            };
            let len = (h.msg_len as usize).min(MAX_DATAGRAM);
            f(Received {
                from,
                data: &self.bufs[i][..len],
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(n)
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// Datagrams to send, flushed with `sendmmsg`; where the socket allows, runs to one
/// destination leave as one segmented message ([`gso`]).
#[derive(Default)]
pub struct SendQueue {
    queued: Vec<(SocketAddr, BytesMut)>,
    /// The flush's order of `queued` (by destination when segmenting); kept for its capacity.
    order: Vec<u32>,
    segmentation: bool,
    /// Dropped because the socket stayed full and the queue reached its bound.
    pub dropped: u64,
}

/// The outcome of one [`SendQueue::flush`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Flushed {
    pub datagrams: usize,
    pub bytes: usize,
    /// Messages handed to the kernel: datagrams, or runs of them sent segmented.
    pub messages: usize,
    pub syscalls: usize,
    /// The socket is full: wait for it to become writable and flush again.
    pub blocked: bool,
}

/// Buffers per `sendmmsg` across all its messages.
const MAX_IOVECS: usize = 4 * BATCH;

impl SendQueue {
    /// Send runs to one destination as segmented messages (the driver turns it on where
    /// [`gso::supported`]); off, each datagram is a message.
    pub fn set_segmentation(&mut self, on: bool) {
        self.segmentation = on;
    }

    pub fn segmentation(&self) -> bool {
        self.segmentation
    }

    pub fn push(&mut self, to: SocketAddr, data: BytesMut) {
        // An empty datagram says nothing (and marks a sent one in `flush`).
        if data.is_empty() {
            return;
        }
        if self.queued.len() >= MAX_QUEUED {
            self.dropped += 1;
            return;
        }
        self.queued.push((to, data));
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Take out the datagrams `take(to, data)` accepts (handed elsewhere); keep the rest.
    pub fn divert(&mut self, mut take: impl FnMut(SocketAddr, &[u8]) -> bool) {
        self.queued.retain(|(to, data)| !take(*to, data));
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Take every queued datagram out, in order (a driver without a socket: tests).
    pub fn drain(&mut self) -> impl Iterator<Item = (SocketAddr, BytesMut)> + '_ {
        self.queued.drain(..)
    }

    pub fn flush(&mut self, socket: &impl AsRawFd) -> Flushed {
        let mut out = Flushed::default();
        let total = self.queued.len();
        if self.segmentation {
            gso::order_by_destination(&self.queued, &mut self.order);
        } else {
            self.order.clear();
            self.order.extend(0..total as u32);
        }
        // SAFETY: zeroed C structs are valid; filled before use below.
        let mut addrs: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        let mut iovecs: [libc::iovec; MAX_IOVECS] = unsafe { mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let mut controls: [gso::Control; BATCH] = [const { gso::Control::new() }; BATCH];
        // Where each header's message starts in `order`, and its length.
        let mut spans = [(0usize, 0usize); BATCH];
        let mut done = 0;
        while done < total {
            let max_segments = if self.segmentation {
                gso::MAX_SEGMENTS
            } else {
                1
            };
            let (mut count, mut at, mut iov) = (0, done, 0);
            while count < BATCH && at < total && iov < MAX_IOVECS {
                let len = gso::message_len(
                    &self.queued,
                    &self.order,
                    at,
                    max_segments.min(MAX_IOVECS - iov),
                );
                for (k, &i) in self.order[at..at + len].iter().enumerate() {
                    let data = &self.queued[i as usize].1;
                    iovecs[iov + k] = libc::iovec {
                        iov_base: data.as_ptr() as *mut libc::c_void,
                        iov_len: data.len(),
                    };
                }
                let (to, first) = &self.queued[self.order[at] as usize];
                let addr_len = std_to_sockaddr(to, &mut addrs[count]);
                let h = &mut headers[count].msg_hdr;
                h.msg_name = addrs[count].as_mut_ptr().cast();
                h.msg_namelen = addr_len;
                h.msg_iov = &mut iovecs[iov];
                h.msg_iovlen = len as _;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                if len > 1 {
                    // SAFETY: `controls` outlives the sendmmsg below.
                    unsafe { gso::set_segment_size(h, &mut controls[count], first.len() as u16) };
                }
                spans[count] = (at, len);
                count += 1;
                at += len;
                iov += len;
            }
            // SAFETY: the first `count` headers point at live addresses, controls and buffers.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            out.syscalls += 1;
            if n < 0 {
                let err = io::Error::last_os_error();
                let (start, len) = spans[0];
                match err.kind() {
                    io::ErrorKind::WouldBlock => {
                        out.blocked = true;
                        break;
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ if len > 1 && gso::is_unsupported(&err) => {
                        // The path cannot segment: send the same datagrams one by one.
                        tracing::warn!("UDP segmentation refused ({err}); sending unsegmented");
                        self.segmentation = false;
                        continue;
                    }
                    // A datagram the kernel refuses (unreachable destination, too big): skip
                    // it rather than wedge the queue behind it.
                    _ => {
                        self.dropped += len as u64;
                        done = start + len;
                        continue;
                    }
                }
            }
            if n == 0 {
                out.blocked = true;
                break;
            }
            for &(start, len) in &spans[..n as usize] {
                out.messages += 1;
                out.datagrams += len;
                out.bytes += self.order[start..start + len]
                    .iter()
                    .map(|&i| self.queued[i as usize].1.len())
                    .sum::<usize>();
                done = start + len;
            }
        }
        if done == total {
            self.queued.clear();
        } else {
            // Blocked: what went out is emptied, the rest waits in its queued order.
            for &i in &self.order[..done] {
                self.queued[i as usize].1 = BytesMut::new();
            }
            self.queued.retain(|(_, data)| !data.is_empty());
        }
        out
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(
    addr: &SocketAddr,
    out: &mut MaybeUninit<libc::sockaddr_storage>,
) -> libc::socklen_t {
    // SAFETY: zeroing then writing a sockaddr_in/in6 prefix keeps the storage valid.
    unsafe {
        out.as_mut_ptr().write_bytes(0, 1);
        match addr {
            SocketAddr::V4(a) => {
                let sin = out.as_mut_ptr() as *mut libc::sockaddr_in;
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr = libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                };
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                let sin6 = out.as_mut_ptr() as *mut libc::sockaddr_in6;
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                (*sin6).sin6_flowinfo = a.flowinfo();
                (*sin6).sin6_scope_id = a.scope_id();
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

/// Ask the kernel for `bytes` of receive and send buffer on a socket (it may grant less: the
/// ceiling is the net.core.rmem_max / wmem_max sysctl). Returns what was granted. Bursts
/// (many handshakes at once, a keyframe fanned out to a room) otherwise overflow the default
/// buffers and lose datagrams before we read them.
pub fn enlarge_buffers(socket: &impl AsRawFd, bytes: usize) -> (usize, usize) {
    let fd = socket.as_raw_fd();
    let set = |opt| {
        let v = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: a valid fd and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    };
    let get = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as above, with an out-parameter of the right size.
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        v.max(0) as usize
    };
    set(libc::SO_RCVBUF);
    set(libc::SO_SNDBUF);
    (get(libc::SO_RCVBUF), get(libc::SO_SNDBUF))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_one_call_each() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut q = SendQueue::default();
        for i in 0..10u8 {
            q.push(to, BytesMut::from(&[i; 100][..]));
        }
        let f = q.flush(&tx);
        assert_eq!(
            (f.datagrams, f.bytes, f.syscalls, f.blocked),
            (10, 1000, 1, false)
        );
        assert!(q.is_empty());

        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        // Loopback delivery is synchronous, but allow a few polls.
        for _ in 0..100 {
            batch
                .recv(&rx, |r| {
                    assert_eq!(r.from, tx.local_addr().unwrap());
                    assert!(!r.truncated);
                    got.push(r.data[0]);
                })
                .unwrap();
            if got.len() == 10 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn runs_to_one_destination_leave_segmented_and_arrive_as_datagrams() {
        let rx = [
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        ];
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(gso::supported(&tx), "loopback segments on Linux 4.18+");
        let mut q = SendQueue::default();
        q.set_segmentation(true);
        // A frame of three packets (two full, one short) fanned out to both, then audio.
        for (i, len) in [(0u8, 1200), (1, 1200), (2, 500), (3, 160)] {
            for r in &rx {
                q.push(r.local_addr().unwrap(), BytesMut::from(&vec![i; len][..]));
            }
        }
        let f = q.flush(&tx);
        // Per receiver: [1200, 1200, 500] in one message, the 160 alone.
        assert_eq!(
            (f.datagrams, f.messages, f.syscalls, f.bytes),
            (8, 4, 1, 2 * 3060)
        );
        assert!(q.is_empty() && q.segmentation());

        let mut batch = RecvBatch::new();
        for r in &rx {
            r.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            for _ in 0..100 {
                batch
                    .recv(r, |d| got.push((d.data[0], d.data.len())))
                    .unwrap();
                if got.len() == 4 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(got, [(0, 1200), (1, 1200), (2, 500), (3, 160)]);
        }
    }

    #[test]
    fn oversized_datagrams_are_reported_truncated() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[0x80; MAX_DATAGRAM + 500], rx.local_addr().unwrap())
            .unwrap();
        let mut batch = RecvBatch::new();
        let mut seen = None;
        for _ in 0..100 {
            batch
                .recv(&rx, |r| seen = Some((r.data.len(), r.truncated)))
                .unwrap();
            if seen.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen, Some((MAX_DATAGRAM, true)));
    }

    #[test]
    fn ipv6_addresses_survive_the_round_trip() {
        let a: SocketAddr = "[fd00::2]:4242".parse().unwrap();
        let mut s = MaybeUninit::uninit();
        let len = std_to_sockaddr(&a, &mut s);
        // SAFETY: just written.
        let s = unsafe { s.assume_init() };
        assert_eq!(sockaddr_to_std(&s, len), Some(a));
    }
}
