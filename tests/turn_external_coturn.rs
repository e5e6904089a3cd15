//! `ice_servers` with an operator's TURN server: a coturn (Debian's, started here on
//! loopback with TURN REST credentials: use-auth-secret, static-auth-secret) configured in
//! signaling's `[[ice_servers.external]]`. A relay-only patient takes the server and its
//! credential from `joined` and holds the consultation through it (the embedded TURN server
//! is off in this test, so coturn is the only relay there is).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::signaling::{Harness, fixture_now};
use common::turn::{CALL_PATIENT as PATIENT, doctor_admits_relayed_patient, media_both_ways};
use metaclinic_loadtest::ClientDriver;
use metaclinic_loadtest::local::free_udp_ports;
use metaclinic_loadtest::relay::RelayTransport;
use metaclinic_signaling::ice::ExternalIceServer;

const COTURN_SECRET: &str = "coturn-rest-secret-0123456789";

/// A coturn process, killed when dropped.
struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_coturn(port: u16) -> Coturn {
    let relay_base = free_udp_ports(20).unwrap();
    let child = Command::new("/usr/bin/turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--allow-loopback-peers",
        ])
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args(["--min-port", &relay_base.to_string()])
        .args(["--max-port", &(relay_base + 19).to_string()])
        .args(["--use-auth-secret", "--static-auth-secret", COTURN_SECRET])
        .args([
            "--realm",
            "coturn.test",
            "--no-stdout-log",
            "--log-file",
            "/dev/null",
        ])
        .args(["--pidfile", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn (/usr/bin/turnserver, Debian package coturn) is installed");
    let coturn = Coturn(child);
    // Ready when it answers a STUN Binding request.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    binding.extend_from_slice(&[9u8; 12]);
    for _ in 0..50 {
        let _ = s.send_to(&binding, ("127.0.0.1", port));
        if s.recv_from(&mut [0u8; 512]).is_ok() {
            return coturn;
        }
    }
    panic!("coturn did not answer on 127.0.0.1:{port} within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_patient_consults_through_the_operators_coturn() {
    // coturn's UDP and TCP listeners share the port number.
    let port = loop {
        let p = free_udp_ports(1).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let _coturn = start_coturn(port);
    let url = format!("turn:127.0.0.1:{port}?transport=udp");
    let h = Harness::start_with(|cfg| {
        cfg.ice_servers.external = vec![ExternalIceServer {
            urls: vec![url.clone(), format!("turn:127.0.0.1:{port}?transport=tcp")],
            shared_secret: COTURN_SECRET.into(),
            ..Default::default()
        }];
    })
    .await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    let driver = ClientDriver::start("coturn").unwrap();
    let (doctor, patient, ice_servers) =
        doctor_admits_relayed_patient(&h, &driver, &driver, (RelayTransport::Udp, None)).await;
    // Only coturn (the node runs no TURN server here), with a REST credential for the
    // patient that coturn's secret signs.
    assert_eq!(ice_servers.len(), 1, "{ice_servers:?}");
    assert_eq!(ice_servers[0].urls[0], url);
    let user = ice_servers[0].username.clone().unwrap();
    assert!(user.ends_with(&format!(":{PATIENT}")), "{user}");
    assert_eq!(
        ice_servers[0].credential.clone().unwrap(),
        metaclinic_sfu::turn::credential::password(COTURN_SECRET.as_bytes(), &user)
    );

    media_both_ways(&doctor, &patient, 0).await;
    patient.leave().await;
    doctor.leave().await;
}

/// The same coturn handed to the reference web client by `metaclinic dev`: two Chromium
/// pages opened with `?relay=1` hold the consultation through it, and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_consults_through_the_operators_coturn() {
    let port = loop {
        let p = free_udp_ports(1).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let _coturn = start_coturn(port);
    // `[[ice_servers.external]]` as an environment override (a list of one table).
    let external = format!(
        "[{{urls=[\"turn:127.0.0.1:{port}?transport=udp\"], shared_secret=\"{COTURN_SECRET}\"}}]"
    );
    let dev = common::dev::start_dev_with(&[
        (
            "METACLINIC_SIGNALING__ICE_SERVERS__EXTERNAL".into(),
            external,
        ),
        (
            "METACLINIC_SIGNALING__ICE_SERVERS__EMBEDDED_TURN".into(),
            "false".into(),
        ),
    ])
    .await;
    tokio::time::timeout(Duration::from_secs(150), async {
        let (browser, doctor, patient) = common::web::relay_only_consultation(&dev.base).await;
        // coturn is the only relay there is: media flowing relay-only went through it.
        common::web::assert_relayed_over(&browser, [&doctor, &patient], "udp").await;
    })
    .await
    .expect("within 150 s");
}
