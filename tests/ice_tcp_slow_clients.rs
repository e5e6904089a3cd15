//! Clients that open ICE-TCP connections and then dribble their first check (two bytes of
//! length, then one byte every two seconds) cannot lock a patient out: each such connection
//! is cut when its whole first check is overdue, one address holds only a few of the node's
//! slots, and there are slots to spare for a real client meanwhile. And a client that sends a
//! burst of frames after its check and stops cannot hold its connection open: the node reads
//! the burst to the end and closes (found by the ice-tcp fuzz target).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_slow_clients_cannot_stop_a_patients_ice_tcp_join() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("tcp-slow").unwrap();
    let c = &sfu.control;
    c.create_room("tcp-slow").await.unwrap();
    let tcp_addr = SocketAddr::from(([127, 0, 0, 1], sfu.tcp_port));

    // 64 slow connections from 16 loopback addresses (127.0.0.2 ...), four each, dripping
    // one byte every two seconds, for ten seconds at most.
    let mut drippers = Vec::new();
    for n in 0..64u8 {
        let local = SocketAddr::from(([127, 0, 0, 2 + n / 4], 0));
        drippers.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(local).expect("bind a loopback address");
            let Ok(mut s) = socket.connect(tcp_addr).await else {
                return;
            };
            if s.write_all(&[0, 200]).await.is_err() {
                return;
            }
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if s.write_all(&[0]).await.is_err() {
                    return;
                }
            }
        }));
    }
    // Let them take their slots.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let video = VideoSpec {
        width: 320,
        height: 240,
        fps: 15,
        kbps: 150,
        ..VideoSpec::default()
    };
    let _doctor = SfuParticipant::join(
        &driver,
        c,
        "tcp-slow",
        None,
        ParticipantSpec::new("doctor")
            .with_tone(440)
            .with_video(video.clone()),
    )
    .await
    .unwrap();
    let mut spec = ParticipantSpec::new("patient")
        .with_tone(660)
        .with_video(video);
    spec.tcp_only = true;
    let patient = SfuParticipant::join(&driver, c, "tcp-slow", None, spec)
        .await
        .unwrap();
    let both = |s: &ParticipantStats| {
        s.audio_from("doctor")
            .is_some_and(|a| a.audio_frames_decoded > 25)
            && s.video_from("doctor")
                .is_some_and(|v| v.frames_complete > 10)
    };
    let s = patient
        .wait_for(Duration::from_secs(15), both)
        .await
        .unwrap();
    assert!(
        both(&s),
        "the patient's ICE-TCP join did not get through: {s:#?}"
    );
    for d in drippers {
        d.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_after_the_first_check_then_silence_is_read_to_the_end_and_closed() {
    use std::io::{Read, Write};
    use std::time::Instant;

    use metaclinic_sfu::events::Rights;
    use metaclinic_sfu::webrtc::{Peer, Side};

    let sfu = common::start_sfu(1);
    let c = &sfu.control;
    c.create_room("burst").await.unwrap();
    c.open_session("burst", "p", None, Rights::default())
        .await
        .unwrap();
    let mut peer = Peer::new(
        Side::Client,
        SocketAddr::from(([127, 0, 0, 1], 9)),
        Instant::now(),
    )
    .unwrap();
    peer.create_channel("x").unwrap();
    let answer = c
        .offer("burst", "p", peer.create_offer(Instant::now()).unwrap())
        .await
        .unwrap();
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned();

    // A framed STUN check naming the session (its integrity is the session's business, not
    // the acceptor's), then 7 KB of frames in one write, then a half-close.
    let username = format!("{ufrag}:abcd");
    let mut check = vec![0x00, 0x01];
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    check.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    check.extend_from_slice(&0x2112A442u32.to_be_bytes());
    check.extend_from_slice(&[3; 12]);
    check.extend_from_slice(&attrs);
    let mut stream = vec![];
    stream.extend_from_slice(&(check.len() as u16).to_be_bytes());
    stream.extend_from_slice(&check);
    for _ in 0..7 {
        stream.extend_from_slice(&1000u16.to_be_bytes());
        stream.extend_from_slice(&[0xffu8; 1000]);
    }
    let tcp_addr = SocketAddr::from(([127, 0, 0, 1], sfu.tcp_port));
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(tcp_addr).unwrap();
        s.write_all(&stream).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The node's first-check deadline is 3 s; well past it, the connection must be gone.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        matches!(s.read(&mut b), Ok(0))
    })
    .await
    .unwrap();
    assert!(
        closed,
        "the node held the connection after the client stopped"
    );
}
