//! Attacker bytes never reach the log. STUN checks that name a live session's ufrag but
//! carry a username with a newline (which would forge a log line in the text format), or
//! another agent's ufrag, are dropped and counted before the WebRTC stack sees them: the
//! node's log stays quiet however many arrive.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metaclinic_loadtest::SfuControl;
use metaclinic_loadtest::local::{free_tcp_addr, free_udp_ports, metric_value};
use metaclinic_sfu::events::Rights;
use metaclinic_sfu::webrtc::{Peer, Side};

const CREDENTIAL: &str = "stun-log-test-credential";

/// The node's process, killed when the test ends however it ends.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binding_request(username: &[u8]) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username);
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112A442u32.to_be_bytes());
    m.extend_from_slice(&[5; 12]);
    m.extend_from_slice(&attrs);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stun_usernames_are_dropped_and_never_logged() {
    // The node, with its log on a pipe and the WebRTC stack's warnings let through.
    let media_port = free_udp_ports(1).unwrap();
    let control_addr = free_tcp_addr().unwrap();
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_metaclinic"))
            .arg("sfu")
            .env("METACLINIC_SFU__CONTROL__LISTEN", control_addr.to_string())
            .env("METACLINIC_SFU__CONTROL__CREDENTIAL", CREDENTIAL)
            .env("METACLINIC_SFU__RTC__BIND_IP", "127.0.0.1")
            .env("METACLINIC_SFU__RTC__UDP_PORT", media_port.to_string())
            .env("METACLINIC_SFU__RTC__TCP_PORT", "0")
            .env("METACLINIC_SFU__RTC__MEDIA_THREADS", "1")
            .env("METACLINIC_SFU__NODE__ANNOUNCED_IP", "127.0.0.1")
            .env("METACLINIC_LOG", "warn")
            .env("METACLINIC_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let control = SfuControl::new(&format!("http://{control_addr}"), CREDENTIAL);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(control_addr).is_err() {
        assert!(Instant::now() < deadline, "the SFU did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A live session: the server's ufrag comes in its answer.
    control.create_room("r").await.unwrap();
    control
        .open_session("r", "p", None, Rights::default())
        .await
        .unwrap();
    let client_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_ports(1).unwrap()));
    let mut peer = Peer::new(Side::Client, client_addr, Instant::now()).unwrap();
    peer.create_channel("x").unwrap();
    let offer = peer.create_offer(Instant::now()).unwrap();
    let answer = control.offer("r", "p", offer).await.unwrap();
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned();

    let media = SocketAddr::from(([127, 0, 0, 1], media_port));
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..200 {
        let forged = format!("{ufrag}:evil\nWARN forged line");
        attacker
            .send_to(&binding_request(forged.as_bytes()), media)
            .unwrap();
        let other_agent = format!("{ufrag}:notTheClientsUfrag");
        attacker
            .send_to(&binding_request(other_agent.as_bytes()), media)
            .unwrap();
    }
    // Counted, by reason, once the shard has read them.
    let dropped = |m: &str, reason: &str| {
        metric_value(
            m,
            "metaclinic_sfu_dropped_total",
            &format!("reason=\"{reason}\""),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = control.metrics().await.unwrap();
        if dropped(&m, "malformed_stun") >= 200.0 && dropped(&m, "stun_username") >= 200.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "not all counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(dropped(&metrics, "malformed_stun") >= 200.0);

    let _ = node.0.kill();
    let mut log = String::new();
    node.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        !log.lines().any(|l| l.starts_with("WARN forged")),
        "a forged line reached the log:\n{log}"
    );
    assert!(
        !log.contains("evil") && !log.contains("notTheClientsUfrag"),
        "an attacker's username reached the log:\n{log}"
    );
    assert!(
        log.lines().count() < 20,
        "400 hostile checks made a noisy log:\n{log}"
    );
}
