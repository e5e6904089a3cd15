//! The keys a real DTLS handshake agreed, used by our own SRTP: what rtc protects we
//! unprotect, and what we protect rtc accepts.

use super::*;
use crate::srtp::{SrtpReceiver, SrtpSender};

#[test]
fn our_srtp_speaks_with_the_handshakes_keys_both_ways() {
    let mut now = Instant::now();
    assert!(
        server_peer(now).srtp_keys().is_none(),
        "no keys before the handshake"
    );
    let (mut server, mut client, video) = connected(&mut now, Codec::Vp8, 4321);

    let (_, from_client) = server.srtp_keys().expect("the server's keys");
    let (client_key, _) = client.srtp_keys().expect("the client's keys");
    let mut unprotect = SrtpReceiver::new(&from_client).unwrap();

    // rtc protects on the client; we unprotect with the server's key for it.
    let mut payload_type = 0;
    for seq in 0..5u16 {
        assert!(client.send_rtp(now, video, &vp8_packet(seq), seq, u32::from(seq) * 3000));
        let mut found = false;
        while let Some(t) = client.poll_transmit() {
            let mut data = t.data.to_vec();
            let rtcp = matches!(data.get(1), Some(192..=223)); // RFC 5761 §4
            if !matches!(data.first(), Some(128..=191)) || rtcp {
                continue;
            }
            let len = unprotect
                .unprotect(&mut data)
                .expect("our SRTP opens rtc's packet");
            assert_eq!(u16::from_be_bytes([data[2], data[3]]), seq);
            assert_eq!(
                u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
                4321
            );
            assert_eq!(data[len - 1], seq as u8, "the payload is plain again");
            payload_type = data[1] & 0x7f;
            found = true;
        }
        assert!(found, "packet {seq} was sent");
    }

    // We protect with the client's key; rtc on the server takes it as the track's RTP.
    let mut protect = SrtpSender::new(&client_key).unwrap();
    let seq = 100u16;
    let mut packet = vec![0x80, 0x80 | payload_type];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&300_000u32.to_be_bytes());
    packet.extend_from_slice(&4321u32.to_be_bytes());
    packet.extend_from_slice(&[0x10, 0x00, 0x9d, 0x01, 0x2a, 0x77]);
    let plain_len = packet.len();
    packet.resize(plain_len + 16, 0);
    let len = protect.protect(&mut packet, plain_len).unwrap();
    server.handle_datagram(now, addr(50000), &packet[..len]);
    let mut received = None;
    while let Some(o) = server.poll_output() {
        if let PeerOutput::Rtp { packet, .. } = o
            && packet.sequence_number == seq
        {
            received = Some(packet);
        }
    }
    let received = received.expect("rtc accepted the packet we protected");
    assert_eq!(&received.payload[..], &[0x10, 0x00, 0x9d, 0x01, 0x2a, 0x77]);
}
