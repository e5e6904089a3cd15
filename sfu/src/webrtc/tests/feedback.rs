use super::*;

/// Move datagrams both ways and collect outputs, for `steps` of 5 ms.
fn pump(
    client: &mut Peer,
    server: &mut Peer,
    now: &mut Instant,
    steps: usize,
    outs: &mut Vec<(bool, PeerOutput)>,
) {
    super::pump(client, server, addr(50000), now, steps, |c, o| {
        outs.push((c, o))
    });
}

#[test]
fn a_keyframe_request_reaches_the_publisher() {
    let mut now = Instant::now();
    let mut server = server_peer(now);
    let mut client = client_peer(now);
    let video = client
        .add_outbound(Codec::Vp8, 4321, "c", "c-video")
        .unwrap();
    let offer = client.create_offer(now).unwrap();
    let answer = server.accept_offer(now, &offer).unwrap();
    client.accept_answer(now, &answer).unwrap();
    let mut outs = Vec::new();
    pump(&mut client, &mut server, &mut now, 100, &mut outs);
    assert_eq!(client.state(), ConnectionState::Connected);
    for seq in 0..5 {
        assert!(client.send_rtp(now, video, &vp8_packet(seq), seq, u32::from(seq) * 3000));
        pump(&mut client, &mut server, &mut now, 2, &mut outs);
    }
    let inbound = outs
        .iter()
        .find_map(|(c, o)| match o {
            PeerOutput::TrackOpened { inbound, .. } if !c => Some(*inbound),
            _ => None,
        })
        .expect("the server sees the track");
    assert!(server.request_keyframe(now, inbound, u8::MAX));
    pump(&mut client, &mut server, &mut now, 10, &mut outs);
    assert!(
        outs.iter().any(|(c, o)| *c && matches!(o, PeerOutput::Feedback { outbound, feedback: Feedback::KeyframeRequest } if *outbound == video)),
        "the client never heard the keyframe request"
    );
}
