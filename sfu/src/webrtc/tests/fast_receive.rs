//! The fast path's receive side against rtc's sending end (a publisher): after a stream's
//! first packet, the SFU opens its packets with its own SRTP and hands them on whole; a lost
//! video packet is asked for and comes again; the publisher hears transport-wide feedback
//! and receiver reports (its loss and its round trip), as it did from rtc's interceptors.

use super::*;

struct Publisher {
    server: Peer,
    client: Peer,
    now: Instant,
    mic: OutboundId,
    camera: OutboundId,
}

/// A connected call in which the client publishes a microphone (SSRC 111) and a camera
/// (SSRC 222).
fn publisher() -> Publisher {
    let mut now = Instant::now();
    let mut server = server_peer(now);
    let mut client = client_peer(now);
    let mic = client.add_outbound(Codec::Opus, 111, "c", "c-mic").unwrap();
    let camera = client.add_outbound(Codec::Vp8, 222, "c", "c-cam").unwrap();
    let offer = client.create_offer(now).unwrap();
    let answer = server.accept_offer(now, &offer).unwrap();
    client.accept_answer(now, &answer).unwrap();
    pump(
        &mut client,
        &mut server,
        addr(50000),
        &mut now,
        100,
        |_, _| {},
    );
    assert_eq!(server.state(), ConnectionState::Connected);
    Publisher {
        server,
        client,
        now,
        mic,
        camera,
    }
}

/// The client sends packet `seq` on both tracks for each of `seqs`, one pair per 20 ms;
/// client-to-server datagrams for which `drop` says so are lost. Returns the server's RTP
/// outputs: (SSRC, sequence number, payload, audio level).
fn publish(
    p: &mut Publisher,
    seqs: impl IntoIterator<Item = u16>,
    drop: &mut impl FnMut(&[u8]) -> bool,
) -> Vec<(u32, u16, Bytes, Option<u8>)> {
    let mut got = Vec::new();
    let mut step = |p: &mut Publisher, got: &mut Vec<_>| {
        while let Some(t) = p.client.poll_transmit() {
            if !drop(&t.data) {
                p.server.handle_datagram(p.now, addr(50000), &t.data);
            }
        }
        while let Some(t) = p.server.poll_transmit() {
            p.client.handle_datagram(p.now, addr(40000), &t.data);
        }
        while p.client.poll_output().is_some() {}
        while let Some(o) = p.server.poll_output() {
            if let PeerOutput::Rtp { packet, .. } = o {
                got.push((
                    packet.ssrc,
                    packet.sequence_number,
                    packet.payload,
                    packet.audio_level,
                ));
            }
        }
        p.now += Duration::from_millis(5);
        for peer in [&mut p.client, &mut p.server] {
            if peer.next_timeout().is_some_and(|t| t <= p.now) {
                peer.handle_timeout(p.now);
            }
        }
    };
    for seq in seqs {
        let mut voice = vp8_packet(seq);
        voice.audio_level = Some(42);
        let ts = u32::from(seq);
        assert!(p.client.send_rtp(p.now, p.mic, &voice, seq, ts * 960));
        assert!(
            p.client
                .send_rtp(p.now, p.camera, &vp8_packet(seq), seq, ts * 1800)
        );
        for _ in 0..4 {
            step(p, &mut got);
        }
    }
    // Long enough for NACKs and their answers.
    for _ in 0..60 {
        step(p, &mut got);
    }
    got
}

/// Packets of SSRC `ssrc` rtc itself opened on the server (before the fast path took over).
fn opened_by_rtc(server: &mut Peer, ssrc: u32) -> u64 {
    let now = Instant::now();
    let report = server
        .pc
        .get_stats(now, rtc::statistics::StatsSelector::None);
    report
        .inbound_rtp_streams()
        .filter(|s| s.received_rtp_stream_stats.rtp_stream_stats.ssrc == ssrc)
        .map(|s| s.received_rtp_stream_stats.packets_received)
        .sum()
}

#[test]
fn a_publisher_s_packets_come_through_the_fast_path_whole_and_in_order() {
    let mut p = publisher();
    // Across a sequence number wrap, which the SRTP index must follow.
    let got = publish(&mut p, 65_500..=65_535, &mut |_| false);
    let got_after = publish(&mut p, 0..40, &mut |_| false);
    for ssrc in [111, 222] {
        let packets: Vec<_> = got
            .iter()
            .chain(&got_after)
            .filter(|(s, ..)| *s == ssrc)
            .collect();
        let seqs: Vec<u16> = packets.iter().map(|(_, seq, ..)| *seq).collect();
        let expected: Vec<u16> = (65_500..=65_535).chain(0..40).collect();
        assert_eq!(seqs, expected, "SSRC {ssrc}: in order, none missing");
        for (_, seq, payload, level) in &packets {
            assert_eq!(payload.as_ref(), vp8_packet(*seq).payload.as_ref());
            let expected_level = (ssrc == 111).then_some(42);
            assert_eq!(*level, expected_level, "SSRC {ssrc}: the audio level");
        }
        // rtc opened a stream's first packet or two; the fast path the rest.
        let by_rtc = opened_by_rtc(&mut p.server, ssrc);
        assert!(by_rtc <= 2, "SSRC {ssrc}: rtc opened {by_rtc} packets");
    }
    let counters = p.server.link_counters(p.now);
    assert_eq!(counters.packets_received, 2 * 76);
    assert_eq!(counters.packets_lost, 0);
    assert!(counters.bytes_received > 2 * 76 * 18);
}

#[test]
fn a_lost_video_packet_is_asked_for_and_comes_again() {
    let mut p = publisher();
    let lost = [20u16, 21, 33];
    let mut dropped = Vec::new();
    let mut drop = |d: &[u8]| match rtp_sequence(d, 222) {
        // Lost the first time only.
        Some(seq) if lost.contains(&seq) && !dropped.contains(&seq) => {
            dropped.push(seq);
            true
        }
        _ => false,
    };
    let got = publish(&mut p, 0..50, &mut drop);
    let mut video: Vec<u16> = got
        .iter()
        .filter(|(s, ..)| *s == 222)
        .map(|(_, seq, ..)| *seq)
        .collect();
    assert_eq!(dropped, lost, "each was lost once");
    video.sort_unstable();
    assert_eq!(video, (0..50).collect::<Vec<_>>(), "and came again, once");
    let counters = p.server.link_counters(p.now);
    assert_eq!(counters.packets_lost, 0, "resent packets are not lost");
}

#[test]
fn the_publisher_hears_feedback_and_its_loss_in_receiver_reports() {
    let mut p = publisher();
    // Every fourth voice packet is lost for good (voice is never resent).
    let mut drop = |d: &[u8]| rtp_sequence(d, 111).is_some_and(|seq| seq % 4 == 0);
    publish(&mut p, 0..120, &mut drop);
    assert!(
        p.client.path_feedback().is_some(),
        "transport-wide feedback reached the publisher"
    );
    let server = p.server.link_counters(p.now);
    // Sequence number 0 was lost before the stream was known: 29 of the 30 count.
    assert_eq!(server.packets_lost, 29, "{server:?}");
    let client = p.client.link_counters(p.now);
    let loss = client
        .loss_down_pct
        .expect("receiver reports reached the publisher");
    assert!(
        (20.0..30.0).contains(&loss),
        "the publisher hears of its loss: {loss}%"
    );
}

#[test]
fn replayed_and_forged_packets_are_dropped_and_the_stream_goes_on() {
    let mut p = publisher();
    let mut captured = Vec::new();
    let got = publish(&mut p, 0..20, &mut |d| {
        if rtp_sequence(d, 222) == Some(10) {
            captured.push(d.to_vec());
        }
        false
    });
    assert_eq!(got.iter().filter(|(s, ..)| *s == 222).count(), 20);
    let replay = captured.pop().expect("packet 10 went out");
    let mut forged = replay.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    p.server.take_rejected_packets();
    for datagram in [&replay, &forged] {
        p.server.handle_datagram(p.now, addr(50000), datagram);
    }
    assert_eq!(p.server.take_rejected_packets(), 2, "both counted");
    let mut outputs = Vec::new();
    while let Some(o) = p.server.poll_output() {
        outputs.push(o);
    }
    assert!(
        !outputs.iter().any(|o| matches!(o, PeerOutput::Rtp { .. })),
        "a replay or a forgery came out: {outputs:?}"
    );
    // The publisher's stream goes on through the fast path.
    let got = publish(&mut p, 20..30, &mut |_| false);
    let video: Vec<u16> = got
        .iter()
        .filter(|(s, ..)| *s == 222)
        .map(|(_, seq, ..)| *seq)
        .collect();
    assert_eq!(video, (20..30).collect::<Vec<_>>());
    assert!(opened_by_rtc(&mut p.server, 222) <= 2);
}
