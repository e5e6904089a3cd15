//! ICE-TCP (RFC 6544, passive) for clients whose network blocks UDP: the node accepts TCP
//! connections on one port, reads the first framed STUN check (RFC 4571: a 16-bit length
//! before every packet), and hands the connection to the shard whose session the check names
//! (the session's ufrag starts with its shard's index). From then on the shard treats each
//! frame as a datagram from that connection's address.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use slab::Slab;
use tracing::{debug, warn};

use super::core::Via;
use super::driver::Shard;
use crate::metrics::DropReason;
use crate::webrtc::stun::{self, StunTarget};

/// mio tokens at and above this are TCP connections (index = token - base).
pub(super) const TCP_TOKEN_BASE: usize = 1 << 20;
/// The largest frame we accept: media datagrams are under 1500 bytes.
const MAX_FRAME: usize = 1600;
/// Queued output per connection; beyond it datagrams are dropped, as a full UDP buffer would.
const MAX_QUEUED: usize = 512 * 1024;
/// Connections that have not sent their first check yet, across the node, and from one
/// client address: a patient's check finds a slot even while someone holds many open.
const MAX_PENDING: usize = 256;
const MAX_PENDING_PER_ADDRESS: usize = 4;
/// Time a new connection has to send its whole first check (not per read: a client that
/// drips one byte at a time is cut at this deadline all the same).
const FIRST_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// The first-check threads do little: a small stack each.
const FIRST_CHECK_STACK: usize = 64 * 1024;

/// Which shard a session's ufrag belongs to (see `ShardCore::open_session`).
pub fn shard_of_ufrag(ufrag: &str) -> Option<usize> {
    usize::from_str_radix(ufrag.get(..2)?, 16).ok()
}

/// A connection adopted by a shard.
pub(super) struct TcpConn {
    stream: mio::net::TcpStream,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    wants_write: bool,
}

#[derive(Default)]
pub(super) struct TcpConns {
    conns: Slab<TcpConn>,
    by_addr: HashMap<SocketAddr, usize>,
}

/// Accept ICE-TCP connections until the process ends; each one's first check is read on a
/// short-lived thread (bounded), so a slow client holds up nobody.
pub fn spawn_acceptor(
    listener: TcpListener,
    adopt: Arc<dyn Fn(usize, TcpStream, Vec<u8>) -> bool + Send + Sync>,
) -> io::Result<()> {
    let pending = PendingSlots::new(MAX_PENDING, MAX_PENDING_PER_ADDRESS);
    std::thread::Builder::new()
        .name("ice-tcp-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Some(slot) = stream.peer_addr().ok().and_then(|a| pending.take(a.ip())) else {
                    continue; // dropped: too many half-open connections (from there)
                };
                let adopt = adopt.clone();
                let spawned = std::thread::Builder::new()
                    .name("ice-tcp-first".into())
                    .stack_size(FIRST_CHECK_STACK)
                    .spawn(move || {
                        let deadline = Instant::now() + FIRST_CHECK_TIMEOUT;
                        if let Some((shard, first)) = first_check(&stream, deadline) {
                            let _ = stream.set_read_timeout(None);
                            if !adopt(shard, stream, first) {
                                debug!("ICE-TCP connection for an unknown shard dropped");
                            }
                        }
                        drop(slot);
                    });
                if spawned.is_err() {
                    warn!("cannot start a thread for an ICE-TCP connection");
                }
            }
        })?;
    Ok(())
}

/// Read the connection's first frame, all of it by `deadline`: a STUN Binding request
/// naming a session's ufrag.
fn first_check(stream: &TcpStream, deadline: Instant) -> Option<(usize, Vec<u8>)> {
    let mut len = [0u8; 2];
    read_by(stream, &mut len, deadline)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    let mut frame = vec![0u8; len];
    read_by(stream, &mut frame, deadline)?;
    match stun::target(&frame) {
        StunTarget::Ufrag(ufrag, _) => Some((shard_of_ufrag(&ufrag)?, frame)),
        _ => None,
    }
}

/// Fill `buf` from `stream` before `deadline`, however the bytes trickle in.
fn read_by(mut stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Option<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return None,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(())
}

/// Slots for connections still owing their first check: so many in all, so many from one
/// address. A slot is given back when its [`PendingSlot`] drops.
#[derive(Clone)]
struct PendingSlots {
    inner: Arc<std::sync::Mutex<(usize, HashMap<std::net::IpAddr, usize>)>>,
    total: usize,
    per_address: usize,
}

struct PendingSlot {
    slots: PendingSlots,
    ip: std::net::IpAddr,
}

impl PendingSlots {
    fn new(total: usize, per_address: usize) -> Self {
        PendingSlots {
            inner: Default::default(),
            total,
            per_address,
        }
    }

    fn take(&self, ip: std::net::IpAddr) -> Option<PendingSlot> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (all, by_ip) = &mut *guard;
        let mine = by_ip.entry(ip).or_default();
        if *all >= self.total || *mine >= self.per_address {
            return None;
        }
        *all += 1;
        *mine += 1;
        Some(PendingSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut guard = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (all, by_ip) = &mut *guard;
        *all -= 1;
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

impl Shard {
    /// Take over a connection whose first check names one of our sessions.
    pub(super) fn adopt_tcp(&mut self, stream: TcpStream, first: Vec<u8>, now: Instant) {
        let Ok(peer) = stream.peer_addr() else { return };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let mut stream = mio::net::TcpStream::from_std(stream);
        let entry = self.tcp.conns.vacant_entry();
        let token = Token(TCP_TOKEN_BASE + entry.key());
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .is_err()
        {
            return;
        }
        let index = entry.key();
        entry.insert(TcpConn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            wants_write: false,
        });
        if let Some(old) = self.tcp.by_addr.insert(peer, index) {
            self.close_tcp(old);
            self.tcp.by_addr.insert(peer, index);
        }
        self.core
            .handle_datagram(now, peer, &first, false, Via::Tcp);
    }

    /// A TCP connection is readable or writable.
    pub(super) fn on_tcp_event(
        &mut self,
        index: usize,
        readable: bool,
        writable: bool,
        now: Instant,
    ) {
        if writable {
            self.flush_tcp(index);
        }
        if !readable {
            return;
        }
        // Read until the socket has nothing more (mio is edge-triggered: bytes left unread
        // raise no new event until the client sends again), unframing after every read so
        // the buffer holds at most one partial frame beside the last read.
        let mut buf = [0u8; 16 * 1024];
        let mut closed = false;
        loop {
            let Some(c) = self.tcp.conns.get_mut(index) else {
                return;
            };
            let drained = match c.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    true
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&buf[..n]);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    true
                }
            };
            if !self.unframe_tcp(index, now) {
                closed = true;
            }
            if drained || closed {
                break;
            }
        }
        if closed {
            self.close_tcp(index);
        }
    }

    /// Queue one datagram on the connection with `to`, framed, and write what the socket takes.
    /// Hand every complete frame of the connection's buffer on as a datagram. False: the
    /// stream is not RFC 4571 framing, and nothing after this can be trusted.
    fn unframe_tcp(&mut self, index: usize, now: Instant) -> bool {
        loop {
            let Some(c) = self.tcp.conns.get_mut(index) else {
                return true;
            };
            if c.inbuf.len() < 2 {
                return true;
            }
            let len = usize::from(u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]));
            if len == 0 || len > MAX_FRAME {
                self.core.tally.drop(DropReason::Oversized);
                return false;
            }
            if c.inbuf.len() < 2 + len {
                return true;
            }
            let frame: Vec<u8> = c.inbuf.drain(..2 + len).skip(2).collect();
            let peer = c.peer;
            self.core
                .handle_datagram(now, peer, &frame, false, Via::Tcp);
        }
    }

    pub(super) fn send_tcp(&mut self, to: SocketAddr, data: &[u8]) {
        let Some(&index) = self.tcp.by_addr.get(&to) else {
            self.core.tally.drop(DropReason::SendFailed);
            return;
        };
        let Some(c) = self.tcp.conns.get_mut(index) else {
            return;
        };
        if c.outbuf.len() + data.len() + 2 > MAX_QUEUED || data.len() > usize::from(u16::MAX) {
            self.core.tally.drop(DropReason::SendFailed);
            return;
        }
        c.outbuf
            .extend_from_slice(&(data.len() as u16).to_be_bytes());
        c.outbuf.extend_from_slice(data);
        self.core.tally.datagrams_sent += 1;
        self.core.tally.bytes_sent += data.len() as u64;
        self.flush_tcp(index);
    }

    fn flush_tcp(&mut self, index: usize) {
        let Some(c) = self.tcp.conns.get_mut(index) else {
            return;
        };
        let mut failed = false;
        while !c.outbuf.is_empty() {
            match c.stream.write(&c.outbuf) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close_tcp(index);
            return;
        }
        // Ask to hear about writability only while output waits.
        let wants = !c.outbuf.is_empty();
        if wants != c.wants_write {
            c.wants_write = wants;
            let interest = if wants {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Token(TCP_TOKEN_BASE + index);
            let _ = self
                .poll
                .registry()
                .reregister(&mut c.stream, token, interest);
        }
    }

    pub(super) fn close_tcp(&mut self, index: usize) {
        if !self.tcp.conns.contains(index) {
            return;
        }
        let mut c = self.tcp.conns.remove(index);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if self.tcp.by_addr.get(&c.peer) == Some(&index) {
            self.tcp.by_addr.remove(&c.peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_slots_are_bounded_in_all_and_per_address() {
        let slots = PendingSlots::new(5, 2);
        let ip = |n: u8| std::net::IpAddr::from([127, 0, 0, n]);
        let a1 = slots.take(ip(2)).unwrap();
        let _a2 = slots.take(ip(2)).unwrap();
        assert!(slots.take(ip(2)).is_none(), "a third from one address");
        let _b = [slots.take(ip(3)).unwrap(), slots.take(ip(3)).unwrap()];
        let _c = slots.take(ip(4)).unwrap();
        assert!(slots.take(ip(5)).is_none(), "the node's total");
        drop(a1);
        assert!(
            slots.take(ip(5)).is_some(),
            "a slot given back is free again"
        );
    }

    #[test]
    fn a_first_check_dripped_byte_by_byte_is_cut_at_the_deadline() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dripper = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            // A length of 100, then one byte every 100 ms: each read is quick, the whole
            // frame never comes.
            let _ = s.write_all(&[0, 100]);
            for _ in 0..30 {
                if s.write_all(&[0]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (stream, _) = listener.accept().unwrap();
        let got = first_check(&stream, Instant::now() + Duration::from_millis(500));
        assert!(got.is_none());
        // Cut while the client was still dripping (it goes on for three seconds).
        assert!(
            !dripper.is_finished(),
            "the check waited for the whole drip"
        );
        drop(stream);
        dripper.join().unwrap();
    }

    #[test]
    fn the_shard_is_read_from_the_ufrag() {
        assert_eq!(shard_of_ufrag("03abcdef"), Some(3));
        assert_eq!(shard_of_ufrag("ffabcdef"), Some(255));
        assert_eq!(shard_of_ufrag("zz"), None);
        assert_eq!(shard_of_ufrag("a"), None);
        assert_eq!(shard_of_ufrag("é1abc"), None);
    }
}
