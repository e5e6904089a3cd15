//! One signaling process: every consultation is at home here, snapshots stay in memory, and
//! no client is ever piped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Home, HomeError, Homes, IncomingPipe, PipeEnd, PipeOp};
use crate::access::ClientInfo;

#[derive(Default)]
pub struct LocalHomes {
    snapshots: Mutex<HashMap<String, String>>,
}

impl LocalHomes {
    fn snapshots(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Homes for LocalHomes {
    fn replica(&self) -> &str {
        "local"
    }

    fn listening(&self) -> bool {
        true
    }

    fn claim<'a>(&'a self, _appointment: &'a str) -> BoxFuture<'a, Result<Home, HomeError>> {
        async { Ok(Home::Here) }.boxed()
    }

    fn renew<'a>(&'a self, _appointments: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        async { Vec::new() }.boxed()
    }

    fn release<'a>(&'a self, _appointment: &'a str) -> BoxFuture<'a, ()> {
        async {}.boxed()
    }

    fn save<'a>(
        &'a self,
        appointment: &'a str,
        snapshot: String,
        _ttl: Duration,
    ) -> BoxFuture<'a, ()> {
        self.snapshots().insert(appointment.to_owned(), snapshot);
        async {}.boxed()
    }

    fn load<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, Option<String>> {
        let s = self.snapshots().get(appointment).cloned();
        async { s }.boxed()
    }

    fn forget<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, ()> {
        self.snapshots().remove(appointment);
        async {}.boxed()
    }

    fn open_pipe<'a>(
        &'a self,
        _home: &'a str,
        _client: ClientInfo,
        _first: String,
    ) -> BoxFuture<'a, Result<(PipeEnd, mpsc::UnboundedReceiver<PipeOp>), HomeError>> {
        async { Err(HomeError::HomeGone) }.boxed()
    }

    fn send<'a>(&'a self, _end: &'a PipeEnd, _op: PipeOp) -> BoxFuture<'a, bool> {
        async { false }.boxed()
    }

    fn close_pipe(&self, _end: &PipeEnd) {}

    fn incoming(&self) -> Option<mpsc::UnboundedReceiver<IncomingPipe>> {
        None
    }

    fn drain(&self, _after_ms: u64) -> BoxFuture<'_, usize> {
        async { 0 }.boxed()
    }
}
