//! A patient whose network lets out nothing but TCP to the media node's TLS port (443 in
//! production; a free port stands for it here) holds a consultation through the node's
//! embedded TURN server over TLS, with a doctor on the open network: audio and video both
//! ways.
//!
//! The patient's media runs in a network namespace the test creates, joined to this one by
//! a veth pair. Inside it, the SFU's media sockets and ICE-TCP port (bound to this
//! namespace's loopback) do not exist; the only thing listening on the far end of the veth
//! is the TURN server's TLS port (its UDP and plain TCP transports are off). The test checks
//! that before the call. The patient's signaling WebSocket stays on this namespace's
//! loopback: the path under test is the media's. The ICE servers come from signaling's
//! `joined`, as the web client gets them.

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::signaling::{Harness, fixture_now};
use common::turn::{
    Netns, SECRET, TurnPorts, doctor_admits_relayed_patient, make_cert, media_both_ways, turn_env,
};
use metaclinic_loadtest::ClientDriver;
use metaclinic_loadtest::relay::RelayTransport;

/// What the namespace can reach: run on a thread inside it.
fn reachable_from(ns: &Netns, tcp: Vec<SocketAddr>, udp: SocketAddr) -> (Vec<bool>, bool) {
    let ns = ns.path();
    std::thread::spawn(move || {
        ns.enter().expect("enter the namespace");
        let tcp_ok = tcp
            .iter()
            .map(|a| TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok())
            .collect();
        // A STUN Binding request to the media port: any answer means UDP gets through.
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        binding.extend_from_slice(&[7u8; 12]);
        let _ = s.send_to(&binding, udp);
        let udp_ok = s.recv_from(&mut [0u8; 512]).is_ok();
        (tcp_ok, udp_ok)
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_behind_a_tls_only_firewall_consults_through_turn_over_tls() {
    let ns = Netns::create("tls");
    let outer = ns.outer.to_string();
    let cert = make_cert(&[&outer]);
    let ports = TurnPorts {
        udp: 0,
        tcp: 0,
        ..TurnPorts::free()
    };
    let env = turn_env(
        ports,
        &cert,
        &[("BIND_IP", outer.clone()), ("TLS_HOST", outer.clone())],
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let h = Harness::start_with_sfu(&env, |cfg| {
        cfg.ice_servers.turn_shared_secret = SECRET.into();
    })
    .await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));

    // From inside, only the TLS port answers: not the SFU's ICE-TCP port or control API
    // (on either address), not its UDP media port.
    let tls: SocketAddr = (ns.outer, ports.tls).into();
    let tcp_targets = vec![
        tls,
        (ns.outer, h.sfu.tcp_port).into(),
        ([127, 0, 0, 1], h.sfu.tcp_port).into(),
        (ns.outer, h.sfu.control_addr.port()).into(),
    ];
    let media = h.sfu.media_addr();
    let (tcp_ok, udp_ok) = reachable_from(&ns, tcp_targets, media);
    assert_eq!(
        tcp_ok,
        [true, false, false, false],
        "only the TLS port is reachable"
    );
    assert!(
        !udp_ok,
        "the SFU's media port must be unreachable from the namespace"
    );
    let (_, udp_outer) = reachable_from(&ns, vec![], (ns.outer, media.port()).into());
    assert!(!udp_outer);

    let open = ClientDriver::start("open").unwrap();
    let inside = ns.path();
    let confined = ClientDriver::start_in("confined", move || inside.enter())
        .expect("a client driver inside the namespace");

    let (doctor, patient, ice_servers) = doctor_admits_relayed_patient(
        &h,
        &open,
        &confined,
        (RelayTransport::Tls, Some(cert.ca_pem.clone())),
    )
    .await;
    let urls = &ice_servers.first().expect("ice_servers in joined").urls;
    assert_eq!(
        urls,
        &[format!("turns:{outer}:{}?transport=tcp", ports.tls)]
    );

    media_both_ways(&doctor, &patient, 15).await;

    let m = h.sfu.control.metrics().await.unwrap();
    let tls_allocations = common::metric(
        &m,
        "metaclinic_sfu_turn_allocations_total",
        "transport=\"tls\"",
    );
    assert_eq!(tls_allocations, 1.0, "{m}");
    let relayed = common::metric(&m, "metaclinic_sfu_turn_relayed_packets_total", "");
    assert!(relayed > 200.0, "{m}");
    patient.leave().await;
    doctor.leave().await;
}
