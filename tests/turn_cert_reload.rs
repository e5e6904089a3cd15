//! The TURN server's TLS certificate is re-read when its files change (cert-manager renews
//! a mounted Secret in place): new connections get the new certificate without a restart;
//! a half-written pair leaves the old one serving.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::turn::{TurnPorts, make_cert, relay_spec, turn_env};
use metaclinic_loadtest::relay::{RelayTransport, TurnRelay};

/// Allocate over TLS trusting only `ca` (a pre-call probe: allowed without a session).
fn allocates(server: SocketAddr, ca: &[u8]) -> Result<(), String> {
    let spec = relay_spec(
        server,
        RelayTransport::Tls,
        "127.0.0.1",
        ca,
        "precall/Patient/p",
    );
    TurnRelay::allocate(&spec, [127, 0, 0, 1].into(), Duration::from_secs(3))
        .map(drop)
        .map_err(|e| format!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let first = make_cert(&["127.0.0.1"]);
    let ports = TurnPorts::free();
    let env = turn_env(ports, &first, &[("BIND_IP", "127.0.0.1".into())]);
    let _sfu = common::turn::start_sfu_with_turn(&env);
    let server: SocketAddr = ([127, 0, 0, 1], ports.tls).into();

    let check = move |ca: Vec<u8>| tokio::task::spawn_blocking(move || allocates(server, &ca));
    // Serving from the start (bounded: the TURN thread takes its first connection shortly
    // after the node answers).
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = check(first.ca_pem.clone()).await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "the first certificate does not serve: {e}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A half-written renewal (the key file garbage): the old pair keeps serving.
    std::fs::write(&first.key_path, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = check(first.ca_pem.clone()).await.unwrap();
    assert!(kept.is_ok(), "a broken renewal changes nothing: {kept:?}");

    // The renewal lands: a certificate from another CA, written over the same files.
    let second = make_cert(&["127.0.0.1"]);
    std::fs::copy(&second.cert_path, &first.cert_path).unwrap();
    std::fs::copy(&second.key_path, &first.key_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(second.ca_pem.clone()).await.unwrap().is_err() {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        check(first.ca_pem.clone()).await.unwrap().is_err(),
        "the old certificate is gone"
    );
}
