//! Peers wired back to back in memory, with time advanced by hand: faster than real time,
//! with whatever loss a test wants. One harness for every test of the module.

use super::negotiation::declared_ssrcs;
use super::*;
use std::time::Duration;

mod congestion;
mod fast_path;
mod fast_receive;
mod feedback;
mod handshake;
mod ice_restart;
mod srtp_keys;

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The SFU's end of a connection (ICE-lite, fixed credentials) at port 40000, sending
/// through the forwarding fast path.
pub(super) fn server_peer(now: Instant) -> Peer {
    server_peer_with(now, true)
}

/// The SFU's end of a connection, sending through the fast path or through rtc's pipeline.
pub(super) fn server_peer_with(now: Instant, fast_path: bool) -> Peer {
    let side = Side::Server {
        ufrag: "srvufrag".into(),
        pwd: "serverpasswordserverpass".into(),
        fast_path,
    };
    Peer::new(side, addr(40000), now).expect("a server peer")
}

/// A client (full ICE) at port 50000.
pub(super) fn client_peer(now: Instant) -> Peer {
    Peer::new(Side::Client, addr(50000), now).expect("a client peer")
}

/// A small VP8 packet whose payload ends in the low byte of its sequence number.
pub(super) fn vp8_packet(seq: u16) -> RtpPacket {
    RtpPacket {
        ssrc: 0,
        sequence_number: seq,
        timestamp: u32::from(seq) * 3000,
        payload_type: 0,
        marker: true,
        payload: Bytes::from(vec![0x10, 0x00, 0x9d, 0x01, 0x2a, seq as u8]),
        audio_level: None,
    }
}

/// The RTP sequence number of an SRTP datagram for `ssrc` (its header is in the clear).
pub(super) fn rtp_sequence(data: &[u8], ssrc: u32) -> Option<u16> {
    let is_rtp = data.len() > 12 && data[0] >> 6 == 2 && !(192..=223).contains(&data[1]);
    (is_rtp && data[8..12] == ssrc.to_be_bytes()).then(|| u16::from_be_bytes([data[2], data[3]]))
}

/// A server and a client connected over the client's first offer, in which it publishes
/// `codec` on `ssrc` (the returned track); `now` moves on by the handshake's time.
pub(super) fn connected(now: &mut Instant, codec: Codec, ssrc: u32) -> (Peer, Peer, OutboundId) {
    let mut server = server_peer(*now);
    let mut client = client_peer(*now);
    let track = client.add_outbound(codec, ssrc, "c", "c-track").unwrap();
    let offer = client.create_offer(*now).unwrap();
    let answer = server.accept_offer(*now, &offer).unwrap();
    client.accept_answer(*now, &answer).unwrap();
    pump(&mut client, &mut server, addr(50000), now, 100, |_, _| {});
    assert_eq!(client.state(), ConnectionState::Connected);
    assert_eq!(server.state(), ConnectionState::Connected);
    (server, client, track)
}

/// Move datagrams both ways for `steps` of 5 ms: the client, at `client_at`, talks to the
/// server, and hears what the server sends to `client_at` (as from port 40000). Every output
/// goes to `seen` (`true`: the client's).
pub(super) fn pump(
    client: &mut Peer,
    server: &mut Peer,
    client_at: SocketAddr,
    now: &mut Instant,
    steps: usize,
    mut seen: impl FnMut(bool, PeerOutput),
) {
    for _ in 0..steps {
        while let Some(t) = client.poll_transmit() {
            server.handle_datagram(*now, client_at, &t.data);
        }
        while let Some(t) = server.poll_transmit() {
            if t.to == client_at {
                client.handle_datagram(*now, addr(40000), &t.data);
            }
        }
        while let Some(o) = client.poll_output() {
            seen(true, o);
        }
        while let Some(o) = server.poll_output() {
            seen(false, o);
        }
        *now += Duration::from_millis(5);
        for p in [&mut *client, &mut *server] {
            if p.next_timeout().is_some_and(|t| t <= *now) {
                p.handle_timeout(*now);
            }
        }
    }
}

#[test]
fn declared_ssrcs_are_read_from_sdp() {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:1234 cname:x\r\na=ssrc:1234 msid:a b\r\n\
               m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=ssrc-group:FID 5 6\r\na=ssrc:5 cname:x\r\na=ssrc:6 cname:x\r\na=ssrc:bad\r\n";
    let got = declared_ssrcs(sdp);
    assert_eq!(got, [1234u32, 5, 6].into_iter().collect::<HashSet<u32>>());
}
