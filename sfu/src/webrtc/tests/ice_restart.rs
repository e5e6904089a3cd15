use super::*;

/// Pump for `steps` x 5 ms with the client at `client_at`; the RTP packets the server
/// received.
fn pump(
    client: &mut Peer,
    server: &mut Peer,
    client_at: SocketAddr,
    now: &mut Instant,
    steps: usize,
) -> usize {
    let mut rtp = 0;
    super::pump(client, server, client_at, now, steps, |c, o| {
        rtp += usize::from(!c && matches!(o, PeerOutput::Rtp { .. }));
    });
    rtp
}

fn opus(seq: u16) -> RtpPacket {
    RtpPacket {
        ssrc: 0,
        sequence_number: seq,
        timestamp: u32::from(seq) * 960,
        payload_type: 0,
        marker: false,
        payload: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
        audio_level: None,
    }
}

#[test]
fn an_ice_restart_from_a_new_port_keeps_the_session() {
    let mut now = Instant::now();
    let mut server = server_peer(now);
    let mut client = client_peer(now);
    let audio = client
        .add_outbound(Codec::Opus, 777, "c", "c-audio")
        .unwrap();
    let offer = client.create_offer(now).unwrap();
    let answer = server.accept_offer(now, &offer).unwrap();
    client.accept_answer(now, &answer).unwrap();
    pump(&mut client, &mut server, addr(50000), &mut now, 100);
    assert_eq!(client.state(), ConnectionState::Connected);
    let mut got = 0;
    for seq in 0..10 {
        client.send_rtp(now, audio, &opus(seq), seq, u32::from(seq) * 960);
        got += pump(&mut client, &mut server, addr(50000), &mut now, 4);
    }
    assert!(got >= 9, "before the move: {got}");

    // The client moves to another port and restarts ICE; the old address goes dark.
    let offer = client.restart_ice(now, addr(50001)).unwrap();
    assert!(offer.contains("50001"), "{offer}");
    let answer = server.accept_offer(now, &offer).unwrap();
    client.accept_answer(now, &answer).unwrap();
    pump(&mut client, &mut server, addr(50001), &mut now, 200);
    let mut got = 0;
    for seq in 10..30 {
        client.send_rtp(now, audio, &opus(seq), seq, u32::from(seq) * 960);
        got += pump(&mut client, &mut server, addr(50001), &mut now, 4);
    }
    assert!(
        got >= 18,
        "after the move only {got} of 20 packets arrived; states {:?} {:?}",
        client.state(),
        server.state()
    );
}
