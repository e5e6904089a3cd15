//! Headless Chromium (Debian's `/usr/bin/chromium`) driven over the DevTools protocol: launch
//! with fake media devices, open a page, evaluate JavaScript and await its promises.
//! Nothing is downloaded; the browser and its profile are gone when dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags the project's browser tests use (see README): headless, fake camera and
/// microphone granted without a prompt, no background traffic.
pub const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
];

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    out: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    /// console.* output of every page, for failure messages.
    pub console: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
pub struct Page {
    session: String,
    out: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

impl Browser {
    pub async fn launch() -> Browser {
        Self::launch_with(&[]).await
    }

    /// Launch with extra flags on top of [`FLAGS`].
    pub async fn launch_with(extra: &[&str]) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium package (the README test command does)"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(CHROMIUM)
            .args(FLAGS)
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // Chromium prints the DevTools address on stderr; read it off a thread (bounded).
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium announces its DevTools address within 30 s");
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("DevTools websocket");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(Message::Text(m.into())).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        let (p, c) = (pending.clone(), console.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                } else if v.get("method").and_then(Value::as_str)
                    == Some("Runtime.consoleAPICalled")
                {
                    let args = v["params"]["args"].as_array().cloned().unwrap_or_default();
                    let line: Vec<String> = args
                        .iter()
                        .map(|a| {
                            a.get("value")
                                .map_or_else(|| a.to_string(), |x| x.to_string())
                        })
                        .collect();
                    c.lock().unwrap().push(line.join(" "));
                }
            }
        });
        Browser {
            child,
            _profile: profile,
            out,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            console,
        }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        call(
            &self.out,
            &self.pending,
            &self.next_id,
            session,
            method,
            params,
        )
        .await
    }

    /// Open `url` in a new tab.
    pub async fn open(&self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["result"]["targetId"]
            .as_str()
            .expect("a target id")
            .to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session = attached["result"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        let page = Page {
            session,
            out: self.out.clone(),
            pending: self.pending.clone(),
            next_id: self.next_id.clone(),
        };
        page.call("Runtime.enable", json!({})).await;
        page.call("Page.enable", json!({})).await;
        page.call("Page.navigate", json!({ "url": url })).await;
        // Wait for the document (bounded).
        for _ in 0..100 {
            let r = page.eval("document.readyState").await;
            if r.as_str() == Some("complete") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    out: &mpsc::UnboundedSender<String>,
    pending: &Pending,
    next_id: &AtomicU64,
    session: Option<&str>,
    method: &str,
    params: Value,
) -> Value {
    let id = next_id.fetch_add(1, Ordering::Relaxed);
    let mut msg = json!({ "id": id, "method": method, "params": params });
    if let Some(s) = session {
        msg["sessionId"] = json!(s);
    }
    let (tx, rx) = oneshot::channel();
    pending.lock().unwrap().insert(id, tx);
    out.send(msg.to_string()).expect("DevTools connection open");
    tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .unwrap_or_else(|_| panic!("DevTools call {method} timed out"))
        .expect("DevTools connection open")
}

impl Page {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        call(
            &self.out,
            &self.pending,
            &self.next_id,
            Some(&self.session),
            method,
            params,
        )
        .await
    }

    /// Evaluate an expression (awaiting a promise) and return its value as JSON. A thrown
    /// exception panics with its text.
    pub async fn eval(&self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(e) = r["result"].get("exceptionDetails") {
            panic!("page script failed: {e}");
        }
        r["result"]["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// A PNG of the page.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["result"]["data"].as_str().unwrap_or_default())
            .unwrap_or_default()
    }
}
