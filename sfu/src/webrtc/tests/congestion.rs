use super::*;

fn pump(client: &mut Peer, server: &mut Peer, now: &mut Instant, steps: usize) {
    super::pump(client, server, addr(50000), now, steps, |_, _| {});
}

fn packet(seq: u16) -> RtpPacket {
    RtpPacket {
        ssrc: 0,
        sequence_number: seq,
        timestamp: u32::from(seq) * 3000,
        payload_type: 0,
        marker: true,
        payload: Bytes::from(vec![0x10u8; 900]),
        audio_level: None,
    }
}

/// Transport-wide feedback flows both ways: the SFU reports what a publisher sends (for
/// the publisher's own estimate), and estimates the bandwidth towards a subscriber from
/// the subscriber's reports, whether rtc or the fast path sends its RTP.
#[test]
fn transport_wide_feedback_reaches_both_sides() {
    transport_wide_feedback_reaches_both_sides_with(false);
    transport_wide_feedback_reaches_both_sides_with(true);
}

fn transport_wide_feedback_reaches_both_sides_with(fast_path: bool) {
    let mut now = Instant::now();
    let mut server = server_peer_with(now, fast_path);
    let mut client = client_peer(now);
    let up = client
        .add_outbound(Codec::Vp8, 4321, "c", "c-video")
        .unwrap();
    let offer = client.create_offer(now).unwrap();
    assert!(offer.contains("transport-wide-cc"), "{offer}");
    let answer = server.accept_offer(now, &offer).unwrap();
    client.accept_answer(now, &answer).unwrap();
    pump(&mut client, &mut server, &mut now, 100);
    assert_eq!(server.state(), ConnectionState::Connected);
    // The SFU sends a track of its own to the client.
    let down = server
        .add_outbound(Codec::Vp8, 9876, "s", "s-video")
        .unwrap();
    let offer = server.create_offer(now).unwrap();
    let answer = client.accept_offer(now, &offer).unwrap();
    server.accept_answer(now, &answer).unwrap();
    pump(&mut client, &mut server, &mut now, 20);
    assert_eq!(server.bandwidth_estimate(), None, "no feedback yet");
    for seq in 0..300u16 {
        client.send_rtp(now, up, &packet(seq), seq, u32::from(seq) * 3000);
        server.send_rtp(now, down, &packet(seq), seq, u32::from(seq) * 3000);
        pump(&mut client, &mut server, &mut now, 2);
    }
    assert!(
        client.path_feedback().is_some(),
        "the publisher gets the SFU's transport-wide feedback"
    );
    let estimate = server.bandwidth_estimate();
    assert!(
        estimate.is_some_and(|e| e >= 64_000),
        "the SFU estimates the subscriber's bandwidth: {estimate:?}"
    );
    let (queue_ms, delivered) = server.path_feedback().unwrap();
    assert!(queue_ms < 50, "no queue in memory: {queue_ms} ms");
    assert!(delivered > 100_000, "delivered {delivered} bit/s");
}
