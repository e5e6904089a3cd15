//! A client cannot hold the listener: one that sends its request headers slowly is cut off
//! after `http.header_read_timeout_ms`, an idle keep-alive connection is closed after as
//! long, and a flood of such clients against a process with few file descriptors neither
//! exhausts them (the connection cap stays below the open-file limit) nor keeps /healthz from
//! answering.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::standalone::{Standalone, raise_open_file_limit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Wait until the server closes `stream` (EOF or a reset), for at most `limit`; how long it
/// took, or `None` if it stayed open. What the server sends before closing is read and
/// ignored.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_are_cut_off() {
    let s =
        Standalone::start(&[("METACLINIC_SIGNALING__HTTP__HEADER_READ_TIMEOUT_MS", "500")]).await;

    // Slowloris: a header line every 100 ms, never the blank line that ends them.
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut buf = [0u8; 256];
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("a slow-header client was held for 5 s");
    trickle.abort();
    assert!(
        cut >= Duration::from_millis(400),
        "cut after {cut:?}, before the timeout"
    );
    println!("slow-header client cut off after {cut:?}");

    // Keep-alive: one request answered, then silence.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok\n") {
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let closed = closed_within(&mut idle, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle keep-alive connection was held for 5 s");
    assert!(
        closed >= Duration::from_millis(400),
        "closed after {closed:?}"
    );
}

/// Slow clients in the flood: four times the connection cap, and fewer than the listener's
/// accept queue (tokio's 1024). A flood larger than the queue tests the kernel, not us: the
/// kernel drops the handshake's last ACK of a connection that finds the queue full, the
/// client believes it is connected while the server retransmits its SYN-ACK with backoff for
/// up to a minute, and such a client can wait that long before the server ever sees it.
const FLOOD: usize = 960;

/// Open a connection and send part of a request head; then wait for the server to cut it.
/// `None`: the connection could not be made in time.
async fn slow_client(addr: SocketAddr) -> Option<bool> {
    let connect = TcpStream::connect(addr);
    let mut stream = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .ok()?
        .ok()?;
    let _ = stream
        .write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
        .await;
    Some(
        closed_within(&mut stream, Duration::from_secs(60))
            .await
            .is_some(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_flood_does_not_exhaust_descriptors_or_silence_healthz() {
    assert!(
        raise_open_file_limit() > 2000,
        "ulimit -n too low for this test"
    );
    let s = Standalone::start_with_open_files(
        &[("METACLINIC_SIGNALING__HTTP__HEADER_READ_TIMEOUT_MS", "1000")],
        256,
    )
    .await;
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(slow_client(s.addr)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // /healthz waits its turn among the flood's connections, but it gets one.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(25))
        .build()
        .unwrap();
    for _ in 0..3 {
        let asked = Instant::now();
        let r = http.get(format!("{}/healthz", s.base)).send().await;
        let r = r.unwrap_or_else(|e| panic!("/healthz under the flood: {e}\n{}", s.log()));
        assert_eq!(r.status(), 200);
        println!("/healthz answered in {:?} under the flood", asked.elapsed());
        assert!(s.open_files() < 256, "{} descriptors open", s.open_files());
    }
    let (mut cut, started) = (0, Instant::now());
    for client in flood {
        match client.await.unwrap() {
            Some(true) => cut += 1,
            Some(false) => panic!("a slow-header client was held for a minute"),
            None => {}
        }
    }
    println!(
        "{cut} of {FLOOD} slow clients connected and were cut off ({:?} more)",
        started.elapsed()
    );
    assert!(
        cut >= FLOOD * 9 / 10,
        "only {cut} of {FLOOD} slow clients got a connection"
    );
    let asked = Instant::now();
    let r = http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    // It stopped accepting at the cap rather than running out of descriptors.
    let waits = s
        .metric("metaclinic_signaling_http_connection_waits_total", "")
        .await;
    assert!(waits > 0.0, "the connection cap was never reached");
    let log = s.log();
    assert!(
        !log.contains("Too many open files"),
        "the process ran out of descriptors:\n{log}"
    );
}
