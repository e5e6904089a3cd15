//! ICE-TCP framing (RFC 4571 over RFC 6544), through a real SFU node on 127.0.0.1: each input
//! is the byte stream of one TCP connection to the node's ICE-TCP port. The node's acceptor
//! reads the first frame (`first_check`: a 16-bit length, then a STUN check naming a session's
//! ufrag) and hands the connection to the shard the ufrag names, which unframes the rest
//! (`Shard::on_tcp_event`) and routes every frame like a datagram. Both are private to the
//! node, so the target drives them as a client does, over loopback.
//!
//! The harness sends the input, half-closes, and waits for the node to close its end: the
//! node must finish every connection whose client stopped sending. Panics on the node's
//! threads are seen by the engine's panic hook.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use metaclinic_sfu::{Node, SfuConfig};

use super::packets::{self, LOCAL_PWD, LOCAL_UFRAG, REMOTE_UFRAG};
use super::{Harness, Target, outcome};
use crate::mutate::Grammar;

/// How long the node may take to close a connection whose client has stopped sending. Its
/// own deadline for a first check is 3 s; the rest takes milliseconds.
const CLOSE_DEADLINE: Duration = Duration::from_secs(6);

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn seeds() -> Vec<Vec<u8>> {
    let check = packets::binding_request(LOCAL_UFRAG, REMOTE_UFRAG, LOCAL_PWD, 9);
    let hello = packets::dtls_client_hello();
    let rtp = packets::rtp_seeds().remove(0);
    let rtcp = packets::rtcp_seeds().remove(0);
    vec![
        frame(&check),
        [frame(&check), frame(&check), frame(&hello)].concat(),
        [frame(&check), frame(&rtp), frame(&rtcp), frame(&check)].concat(),
        // A frame cut short, and one over the node's limit.
        [frame(&check), frame(&hello)[..20].to_vec()].concat(),
        [frame(&check), vec![0x06, 0x41], vec![0; 16]].concat(),
        // The first check for another shard, and one without a username.
        frame(&packets::binding_request(
            "01cc22dd",
            "Xy9z",
            "anotherpasswordanother",
            3,
        )),
        frame(&packets::stun(0x0001, 4, &[], None)),
    ]
}

pub fn target() -> Target {
    Target {
        name: "ice-tcp",
        entry: "sfu::Node's ICE-TCP port (shard::tcp: first_check, Shard::on_tcp_event)",
        grammar: Grammar::Bytes,
        max_len: 16 * 1024,
        dict: &[
            b"\x00\x01",
            b"\x06\x40",
            b"\x06\x41",
            b"\x00\x00",
            b"\xff\xff",
            b"00aa11bb:Wv3q",
            b"\x21\x12\xa4\x42",
        ],
        seeds,
        build: || Box::new(IceTcp::start()),
    }
}

struct IceTcp {
    // Kept alive for the harness's lifetime; the node's threads run until the process ends.
    _node: Arc<Node>,
    addr: SocketAddr,
}

impl IceTcp {
    fn start() -> IceTcp {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut config = SfuConfig::default();
        config.rtc.bind_ip = [127, 0, 0, 1].into();
        config.rtc.udp_port = 0; // an ephemeral media port for the one shard
        config.rtc.media_threads = 1;
        config.rtc.tcp_port = port;
        config.rtc.socket_buffer_bytes = 1 << 16;
        let node = Node::start(config).expect("an SFU node on 127.0.0.1");
        IceTcp {
            _node: node,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// Close with a reset rather than a FIN, so that loopback ports do not pile up in TIME_WAIT
/// at thousands of connections a second.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

impl Harness for IceTcp {
    fn run(&mut self, data: &[u8]) -> u64 {
        let mut s = TcpStream::connect(self.addr).expect("connecting to the node's ICE-TCP port");
        let _ = s.set_nodelay(true);
        let _ = s.set_write_timeout(Some(CLOSE_DEADLINE));
        let _ = s.set_read_timeout(Some(CLOSE_DEADLINE));
        // The node may close early (a bad first frame): later writes then fail, as they should.
        let sent_all = s.write_all(data).is_ok();
        let _ = s.shutdown(Shutdown::Write);
        let mut replied = 0usize;
        let mut buf = [0u8; 4096];
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break "closed",
                Ok(n) => replied += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "invariant: the node kept an ICE-TCP connection open {CLOSE_DEADLINE:?} after its client stopped sending ({} bytes sent, {replied} received)",
                        data.len()
                    );
                }
                Err(_) => break "reset",
            }
        };
        reset_on_close(&s);
        outcome(&[
            &format!("{end} {sent_all} {}", replied > 0),
            &first_frame_kind(data),
        ])
    }
}

/// A coarse description of the first frame, to steer mutation (not to check the node).
fn first_frame_kind(data: &[u8]) -> String {
    let Some(len) = data
        .get(..2)
        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
    else {
        return "short".into();
    };
    let frames = {
        let (mut at, mut n) = (0, 0);
        while let Some(l) = data.get(at..at + 2) {
            at += 2 + usize::from(u16::from_be_bytes([l[0], l[1]]));
            n += 1;
        }
        "f".repeat(n.min(8)) // as letters: `outcome` leaves digits out
    };
    use metaclinic_sfu::webrtc::stun::{StunTarget, target};
    let first = match data.get(2..2 + len).map(target) {
        Some(StunTarget::Ufrag(local, _)) => format!("ufrag {}", local.get(..2).unwrap_or("")),
        Some(StunTarget::NoUsername) => "no username".into(),
        Some(StunTarget::Malformed) => "malformed".into(),
        None => "cut".into(),
    };
    format!("{first} frames {frames}")
}
