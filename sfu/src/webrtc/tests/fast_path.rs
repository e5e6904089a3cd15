//! The forwarding fast path against rtc's receiving end: every packet arrives with its header
//! extensions, lost packets come again when the subscriber asks, a packet that can never
//! come again turns into a keyframe request, sender reports go out, and media follows the
//! subscriber to a new address after an ICE restart.

use super::*;

/// What the client heard: (sequence number, payload, audio level) per RTP packet.
type Heard = Vec<(u16, Bytes, Option<u8>)>;

/// Like `super::pump`, but server-to-client datagrams for which `drop` says so are lost;
/// the client's RTP goes to `heard`, and the server's outputs to `server_out`.
fn pump_lossy(
    call: &mut Call,
    steps: usize,
    drop: &mut impl FnMut(&[u8]) -> bool,
    heard: &mut Heard,
    server_out: &mut Vec<PeerOutput>,
) {
    for _ in 0..steps {
        while let Some(t) = call.client.poll_transmit() {
            call.server
                .handle_datagram(call.now, call.client_at, &t.data);
        }
        while let Some(t) = call.server.poll_transmit() {
            if t.to == call.client_at && !drop(&t.data) {
                call.client.handle_datagram(call.now, addr(40000), &t.data);
            }
        }
        while let Some(o) = call.client.poll_output() {
            if let PeerOutput::Rtp { packet, .. } = o {
                heard.push((packet.sequence_number, packet.payload, packet.audio_level));
            }
        }
        while let Some(o) = call.server.poll_output() {
            server_out.push(o);
        }
        call.now += Duration::from_millis(5);
        for p in [&mut call.client, &mut call.server] {
            if p.next_timeout().is_some_and(|t| t <= call.now) {
                p.handle_timeout(call.now);
            }
        }
    }
}

struct Call {
    server: Peer,
    client: Peer,
    client_at: SocketAddr,
    now: Instant,
    audio: OutboundId,
    video: OutboundId,
}

/// A connected call in which the server sends an audio and a video track to the client.
fn call() -> Call {
    let mut now = Instant::now();
    let (mut server, mut client, _mic) = connected(&mut now, Codec::Opus, 111);
    let audio = server
        .add_outbound(Codec::Opus, 5001, "s", "s-audio")
        .unwrap();
    let video = server
        .add_outbound(Codec::Vp8, 5002, "s", "s-video")
        .unwrap();
    let offer = server.create_offer(now).unwrap();
    let answer = client.accept_offer(now, &offer).unwrap();
    server.accept_answer(now, &answer).unwrap();
    pump(
        &mut client,
        &mut server,
        addr(50000),
        &mut now,
        20,
        |_, _| {},
    );
    assert!(server.outbound_ready(audio) && server.outbound_ready(video));
    Call {
        server,
        client,
        client_at: addr(50000),
        now,
        audio,
        video,
    }
}

fn media(seq: u16, level: Option<u8>) -> RtpPacket {
    RtpPacket {
        ssrc: 0,
        sequence_number: seq,
        timestamp: 0,
        payload_type: 0,
        marker: true,
        payload: Bytes::from(vec![0x10, 0x00, 0x9d, 0x01, (seq >> 8) as u8, seq as u8]),
        audio_level: level,
    }
}

#[test]
fn every_packet_arrives_with_its_payload_and_audio_level() {
    let mut c = call();
    let (mut heard, mut out) = (Heard::new(), Vec::new());
    for seq in 0..40u16 {
        let now = c.now;
        assert!(c.server.send_rtp(
            now,
            c.audio,
            &media(seq, Some(30)),
            seq,
            u32::from(seq) * 960
        ));
        pump_lossy(&mut c, 2, &mut |_| false, &mut heard, &mut out);
    }
    let got: Vec<u16> = heard.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(got, (0..40).collect::<Vec<_>>(), "in order, none missing");
    for (seq, payload, level) in &heard {
        assert_eq!(payload.as_ref(), media(*seq, None).payload.as_ref());
        assert_eq!(*level, Some(30), "the audio level extension arrives");
    }
    assert!(c.server.link_counters(c.now).bytes_sent > 40 * 18);
}

#[test]
fn lost_packets_are_resent_when_the_subscriber_asks() {
    let mut c = call();
    let (mut heard, mut out) = (Heard::new(), Vec::new());
    let lost = [10u16, 11, 25];
    let mut dropped = Vec::new();
    let mut drop = |d: &[u8]| match rtp_sequence(d, 5002) {
        // Lost the first time only.
        Some(seq) if lost.contains(&seq) && !dropped.contains(&seq) => {
            dropped.push(seq);
            true
        }
        _ => false,
    };
    for seq in 0..60u16 {
        let now = c.now;
        assert!(
            c.server
                .send_rtp(now, c.video, &media(seq, None), seq, u32::from(seq) * 3000)
        );
        pump_lossy(&mut c, 4, &mut drop, &mut heard, &mut out);
    }
    pump_lossy(&mut c, 100, &mut drop, &mut heard, &mut out);
    let mut got: Vec<u16> = heard.iter().map(|(s, _, _)| *s).collect();
    got.sort_unstable();
    got.dedup();
    assert_eq!(
        got,
        (0..60).collect::<Vec<_>>(),
        "the lost packets came again"
    );
    let counters = c.server.link_counters(c.now);
    assert!(counters.nacked_packets >= 3, "{counters:?}");
    assert!(counters.retransmissions >= 3, "{counters:?}");
    assert_eq!(counters.unanswerable_nacks, 0);
}

#[test]
fn a_packet_that_was_never_sent_asks_for_a_keyframe() {
    let mut c = call();
    let (mut heard, mut out) = (Heard::new(), Vec::new());
    // The SFU never had 20..30 (lost before it, say): the subscriber asks for them in vain.
    for seq in (0..20u16).chain(30..60) {
        let now = c.now;
        assert!(
            c.server
                .send_rtp(now, c.video, &media(seq, None), seq, u32::from(seq) * 3000)
        );
        pump_lossy(&mut c, 4, &mut |_| false, &mut heard, &mut out);
    }
    pump_lossy(&mut c, 100, &mut |_| false, &mut heard, &mut out);
    let video = c.video;
    assert!(
        out.iter().any(|o| matches!(
            o,
            PeerOutput::Feedback { outbound, feedback: Feedback::KeyframeRequest } if *outbound == video
        )),
        "no keyframe request"
    );
    assert!(c.server.link_counters(c.now).unanswerable_nacks > 0);
}

#[test]
fn sender_reports_go_out_for_each_stream() {
    let mut c = call();
    let (mut heard, mut out) = (Heard::new(), Vec::new());
    let mut reports = Vec::new();
    let mut watch = |d: &[u8]| {
        // SRTCP leaves the first eight bytes in the clear: the type and the sender's SSRC.
        if d.len() >= 8 && d[0] >> 6 == 2 && d[1] == 200 {
            reports.push(u32::from_be_bytes([d[4], d[5], d[6], d[7]]));
        }
        false
    };
    for seq in 0..150u16 {
        let now = c.now;
        c.server
            .send_rtp(now, c.audio, &media(seq, None), seq, u32::from(seq) * 960);
        c.server
            .send_rtp(now, c.video, &media(seq, None), seq, u32::from(seq) * 3000);
        pump_lossy(&mut c, 4, &mut watch, &mut heard, &mut out);
    }
    // Three seconds: a report per stream per second.
    for ssrc in [5001, 5002] {
        let n = reports.iter().filter(|&&s| s == ssrc).count();
        assert!((2..=4).contains(&n), "{n} reports for {ssrc}: {reports:?}");
    }
}

#[test]
fn media_follows_the_subscriber_after_an_ice_restart() {
    let mut c = call();
    let (mut heard, mut out) = (Heard::new(), Vec::new());
    let offer = c.client.restart_ice(c.now, addr(50001)).unwrap();
    let answer = c.server.accept_offer(c.now, &offer).unwrap();
    c.client.accept_answer(c.now, &answer).unwrap();
    c.client_at = addr(50001);
    pump_lossy(&mut c, 200, &mut |_| false, &mut heard, &mut out);
    for seq in 0..20u16 {
        let now = c.now;
        c.server
            .send_rtp(now, c.audio, &media(seq, None), seq, u32::from(seq) * 960);
        pump_lossy(&mut c, 4, &mut |_| false, &mut heard, &mut out);
    }
    assert!(
        heard.len() >= 18,
        "after the move only {} of 20 arrived",
        heard.len()
    );
}

#[test]
fn removed_tracks_make_room_for_new_ones_however_long_the_call() {
    let mut c = call();
    let (mut heard, mut out) = (Heard::new(), Vec::new());
    // More tracks over the call than one connection's SRTP streams, one at a time (people
    // joining and leaving a long consultation).
    for round in 0..(crate::srtp::MAX_STREAMS as u32 + 8) {
        let track = c
            .server
            .add_outbound(Codec::Opus, 9000 + round, "s", &format!("t{round}"))
            .unwrap();
        let offer = c.server.create_offer(c.now).unwrap();
        let answer = c.client.accept_offer(c.now, &offer).unwrap();
        c.server.accept_answer(c.now, &answer).unwrap();
        pump_lossy(&mut c, 4, &mut |_| false, &mut heard, &mut out);
        let now = c.now;
        assert!(
            c.server.send_rtp(now, track, &media(1, None), 1, 960),
            "track {round} could not send"
        );
        c.server.remove_outbound(track).unwrap();
    }
}
