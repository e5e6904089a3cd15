//! Shared harness of the end-to-end tests: a real `metaclinic sfu` process on loopback ports
//! chosen for the test, and helpers to wait (boundedly) for conditions.

#![allow(dead_code)]

use std::net::SocketAddr;

#[allow(unused_imports)]
pub use metaclinic_loadtest::local::LOCAL_CREDENTIAL as CREDENTIAL;
use metaclinic_loadtest::local::LocalSfu;

/// A running `metaclinic sfu` built for this test run.
pub type SfuProcess = LocalSfu;

pub fn start_sfu(media_threads: u16) -> SfuProcess {
    start_sfu_with(media_threads, &[])
}

pub fn start_sfu_with(media_threads: u16, env: &[(&str, &str)]) -> SfuProcess {
    LocalSfu::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_metaclinic")),
        media_threads,
        env,
    )
    .expect("the SFU starts")
}

#[allow(unused_imports)]
pub use metaclinic_loadtest::local::metric_value as metric;

/// Serve `html` for every GET on a loopback port, for as long as the test runs.
pub async fn serve_page(html: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

pub mod browser;
pub mod cluster;
pub mod dev;
pub mod signaling;
pub mod standalone;
pub mod turn;
pub mod web;
