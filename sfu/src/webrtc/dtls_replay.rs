//! A workaround for a DTLS defect of rtc 0.21.1 (see [`FlightReplay`]).

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::BytesMut;

/// Works around a DTLS defect of rtc 0.21.1: when the remote side retransmits a handshake
/// flight (because ours was lost), rtc does not send its own last flight again, so a single
/// lost flight (say the server's certificate flight on a patient's lossy Wi-Fi) stalls the
/// handshake for good. Until it is fixed upstream, the peer remembers its last flight and
/// replays it when a retransmission comes in.
#[derive(Default)]
pub(super) struct FlightReplay {
    last_flight: Vec<(SocketAddr, BytesMut)>,
    /// The next DTLS datagram we send starts a new flight.
    new_flight: bool,
    /// The highest handshake message_seq received so far.
    max_received_seq: Option<u16>,
    replays: u32,
    pub(super) pending: VecDeque<(SocketAddr, BytesMut)>,
}

/// Replays per connection at most; a handshake that needs more is not going to finish. The
/// state is kept after our side completes (the remote may still be missing our last flight)
/// until encrypted traffic from the remote proves it completed too.
const MAX_FLIGHT_REPLAYS: u32 = 16;

/// The message_seq of the first handshake message of a DTLS datagram in epoch 0.
fn dtls_handshake_seq(d: &[u8]) -> Option<u16> {
    // Record: type(1) version(2) epoch(2) seq(6) length(2); handshake: type(1) length(3) seq(2).
    if d.len() < 19 || d[0] != 22 || d[3] != 0 || d[4] != 0 {
        return None;
    }
    Some(u16::from_be_bytes([d[17], d[18]]))
}

impl FlightReplay {
    pub(super) fn on_received(&mut self, d: &[u8]) {
        let Some(seq) = dtls_handshake_seq(d) else {
            return;
        };
        match self.max_received_seq {
            Some(max) if seq <= max => {
                if self.replays < MAX_FLIGHT_REPLAYS && !self.last_flight.is_empty() {
                    self.replays += 1;
                    self.pending.extend(self.last_flight.iter().cloned());
                }
            }
            _ => {
                self.max_received_seq = Some(seq);
                self.new_flight = true;
            }
        }
    }

    pub(super) fn on_sent(&mut self, to: SocketAddr, d: &BytesMut) {
        if !matches!(d.first(), Some(20..=63)) {
            return;
        }
        if self.new_flight {
            self.last_flight.clear();
            self.new_flight = false;
        }
        self.last_flight.push((to, d.clone()));
    }
}
