//! Idle WebSockets that never join cost little and give their memory back: thousands of
//! them (one client holding them open) stay within a memory budget per connection of the
//! signaling process, its memory returns once they close, and one address cannot hold more
//! than its share (`limits.max_unjoined_per_address`: 429 `too_many_connections`, counted and
//! audited).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::standalone::{Standalone, raise_open_file_limit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const IDLE: usize = 2000;

/// Memory one idle, unauthenticated WebSocket may cost the server (it was ~135 KiB: a 128 KiB
/// read buffer, zeroed at upgrade).
const BUDGET_PER_SOCKET_KIB: f64 = 24.0;

/// A WebSocket handshake from `from` (a loopback address); the stream and the answer's
/// status code and body.
async fn open_ws(addr: SocketAddr, from: IpAddr) -> (TcpStream, u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer to the handshake")
            .unwrap();
        assert_eq!(n, 1, "closed during the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    (stream, status, String::from_utf8(body).unwrap())
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// Poll `cond` for up to `limit`.
async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, mut cond: F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websockets_stay_small_and_their_memory_comes_back() {
    assert!(
        raise_open_file_limit() > 2 * IDLE as u64 + 200,
        "ulimit -n too low"
    );
    let s = Standalone::start(&[
        // One address holds them all here; the cap is tested below.
        (
            "METACLINIC_SIGNALING__LIMITS__MAX_UNJOINED_PER_ADDRESS",
            "10000",
        ),
        ("METACLINIC_SIGNALING__LIMITS__JOIN_TIMEOUT_S", "120"),
    ])
    .await;
    // A few connections first, so that what every process allocates once is not counted.
    let warm: Vec<_> =
        futures_util::future::join_all((0..20).map(|_| open_ws(s.addr, localhost()))).await;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = s.rss_kib();

    let mut sockets = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let (stream, status, _) = open_ws(s.addr, localhost()).await;
        assert_eq!(status, 101);
        sockets.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = s.rss_kib();
    let per_socket = (peak.saturating_sub(before)) as f64 / IDLE as f64;
    println!(
        "RSS {before} KiB -> {peak} KiB with {IDLE} idle WebSockets: {per_socket:.1} KiB each"
    );
    assert!(
        per_socket < BUDGET_PER_SOCKET_KIB,
        "{per_socket:.1} KiB per idle WebSocket (budget {BUDGET_PER_SOCKET_KIB} KiB)"
    );
    let open = s.metric("metaclinic_signaling_http_connections", "").await as usize;
    assert!(
        (IDLE..IDLE + 25).contains(&open),
        "{open} connections counted: each idle WebSocket is one"
    );

    drop(sockets);
    let closed = eventually(Duration::from_secs(20), async || {
        s.metric("metaclinic_signaling_http_connections", "").await <= 1.0
    })
    .await;
    assert!(closed, "the server did not notice the closes");
    // The trimmer looks every 2 s.
    let kept = Duration::from_secs(10);
    let back = eventually(kept, async || {
        let now = s.rss_kib();
        now.saturating_sub(before) < (peak - before) / 5 + 2048
    })
    .await;
    let after = s.rss_kib();
    println!("RSS after they closed: {after} KiB (peak {peak} KiB, before {before} KiB)");
    assert!(
        back,
        "memory did not come back: {before} KiB before, {peak} KiB with them, {after} KiB after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_unjoined_websockets() {
    let s = Standalone::start(&[
        (
            "METACLINIC_SIGNALING__LIMITS__MAX_UNJOINED_PER_ADDRESS",
            "5",
        ),
        ("METACLINIC_SIGNALING__LIMITS__JOIN_TIMEOUT_S", "60"),
        (
            "METACLINIC_SIGNALING__AUDIT__REFUSAL_SUMMARY_INTERVAL_S",
            "1",
        ),
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let (stream, status, _) = open_ws(s.addr, localhost()).await;
        assert_eq!(status, 101);
        held.push(stream);
    }
    for _ in 0..20 {
        let (_, status, body) = open_ws(s.addr, localhost()).await;
        assert_eq!(status, 429, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
    // Another address has its own share.
    let (_other, status, _) = open_ws(s.addr, "127.0.0.2".parse().unwrap()).await;
    assert_eq!(status, 101);
    // A closed one makes room again.
    drop(held.pop());
    let room = eventually(Duration::from_secs(5), async || {
        open_ws(s.addr, localhost()).await.1 == 101
    })
    .await;
    assert!(room, "a closed WebSocket's place was not given back");

    let refused = s
        .metric(
            "metaclinic_signaling_ws_refused_total",
            "code=\"too_many_connections\"",
        )
        .await;
    // 20, and those made while waiting for the closed one's place.
    assert!(refused >= 20.0, "{refused}");
    // Audited: the first at once, the others of the interval in one summary record each.
    let audited = eventually(Duration::from_secs(5), async || {
        let records: Vec<_> = s
            .audit()
            .into_iter()
            .filter(|r| r["reason"] == "too_many_connections")
            .collect();
        let total: u64 = records
            .iter()
            .map(|r| r["count"].as_u64().unwrap_or(1))
            .sum();
        total == refused as u64 && records.len() <= 4
    })
    .await;
    assert!(audited, "{:#?}", s.audit());
    assert!(
        s.audit()
            .iter()
            .all(|r| r["action"] == "connect" && r["client_ip"] == "127.0.0.1")
    );
}
