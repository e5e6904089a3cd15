//! Transport-wide congestion control feedback for what a publisher sends us
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01): when each transport-wide sequence
//! number arrived, reported back every 100 ms so that the publisher's own estimator (GCC, in
//! the browser) sees the path.
//!
//! Arrival times sit in a fixed ring indexed by sequence number: recording a packet
//! allocates nothing. A feedback covers every number from the first not yet reported to the
//! highest seen; one that arrives after its number was reported is left out (the publisher
//! counted it lost, as libwebrtc's own receiver does).

use std::time::Instant;

use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
    SymbolTypeTcc, TransportLayerCc,
};

/// Sequence numbers held between feedbacks: far more than 100 ms of any publisher's packets,
/// and twice what sends the feedback early (`EAGER`), so a receive batch arriving past that
/// point still fits.
const SLOTS: usize = 512;
/// Past this many numbers waiting, the feedback goes out without waiting for its timer.
pub(super) const EAGER: usize = 256;
/// Receive deltas are in units of 250 us; the reference time in units of 64 ms.
const TICK_US: i64 = 250;
const TICKS_PER_REFERENCE: i64 = 256;
/// Symbols in one two-bit status vector chunk.
const SYMBOLS_PER_CHUNK: usize = 7;

pub(super) struct TwccRecorder {
    start: Instant,
    /// Arrival in ticks since `start`, plus one (zero: not arrived), by sequence number.
    arrivals: Box<[u32; SLOTS]>,
    /// The first sequence number not yet reported, and the highest seen (unwrapped).
    next: Option<i64>,
    highest: i64,
    media_ssrc: u32,
    feedback_count: u8,
}

impl TwccRecorder {
    pub fn new(start: Instant) -> Self {
        TwccRecorder {
            start,
            arrivals: Box::new([0; SLOTS]),
            next: None,
            highest: 0,
            media_ssrc: 0,
            feedback_count: 0,
        }
    }

    /// Numbers waiting to be reported.
    pub fn waiting(&self) -> usize {
        self.next
            .map_or(0, |next| (self.highest + 1 - next).max(0) as usize)
    }

    /// The sequence number `seq` arrived at `now` on `ssrc`'s packet.
    pub fn record(&mut self, now: Instant, seq: u16, ssrc: u32) {
        // Unwrapped against the highest seen: the nearest number with these low 16 bits.
        let seq = match self.next {
            None => {
                let seq = i64::from(seq);
                self.next = Some(seq);
                self.highest = seq;
                seq
            }
            Some(_) => self.highest + i64::from(seq.wrapping_sub(self.highest as u16) as i16),
        };
        let Some(next) = self.next.as_mut() else {
            return;
        };
        if seq < *next {
            return;
        }
        if seq - *next >= SLOTS as i64 {
            // Too far ahead of what is waiting (a publisher's jump): start over from here.
            self.arrivals.fill(0);
            *next = seq;
            self.highest = seq;
        }
        let ticks = now.saturating_duration_since(self.start).as_micros() as i64 / TICK_US;
        self.arrivals[seq as usize % SLOTS] = (ticks as u32).saturating_add(1);
        self.highest = self.highest.max(seq);
        self.media_ssrc = ssrc;
    }

    /// The feedback for everything waiting, if anything arrived.
    pub fn feedback(&mut self, sender_ssrc: u32) -> Option<TransportLayerCc> {
        let first = self.next?;
        let count = self.waiting();
        if count == 0 {
            return None;
        }
        let mut chunks = Vec::with_capacity(count.div_ceil(SYMBOLS_PER_CHUNK));
        let mut deltas = Vec::new();
        let mut symbols = Vec::with_capacity(SYMBOLS_PER_CHUNK);
        let mut reference = None;
        let mut previous = 0i64;
        for seq in first..first + count as i64 {
            let slot = &mut self.arrivals[seq as usize % SLOTS];
            let symbol = match std::mem::take(slot) {
                0 => SymbolTypeTcc::PacketNotReceived,
                arrival => {
                    let ticks = i64::from(arrival - 1);
                    let base = *reference.get_or_insert(ticks / TICKS_PER_REFERENCE);
                    if deltas.is_empty() {
                        previous = base * TICKS_PER_REFERENCE;
                    }
                    let delta = (ticks - previous).clamp(i64::from(i16::MIN), i64::from(i16::MAX));
                    previous += delta;
                    let symbol = if (0..=255).contains(&delta) {
                        SymbolTypeTcc::PacketReceivedSmallDelta
                    } else {
                        SymbolTypeTcc::PacketReceivedLargeDelta
                    };
                    deltas.push(RecvDelta {
                        type_tcc_packet: symbol,
                        delta: delta * TICK_US,
                    });
                    symbol
                }
            };
            symbols.push(symbol);
            if symbols.len() == SYMBOLS_PER_CHUNK {
                chunks.push(vector_chunk(std::mem::take(&mut symbols)));
            }
        }
        if !symbols.is_empty() {
            chunks.push(vector_chunk(symbols));
        }
        self.next = Some(first + count as i64);
        let reference = reference?;
        let feedback = TransportLayerCc {
            sender_ssrc,
            media_ssrc: self.media_ssrc,
            base_sequence_number: first as u16,
            packet_status_count: count as u16,
            reference_time: (reference & 0x00ff_ffff) as u32,
            fb_pkt_count: self.feedback_count,
            packet_chunks: chunks,
            recv_deltas: deltas,
        };
        self.feedback_count = self.feedback_count.wrapping_add(1);
        Some(feedback)
    }
}

fn vector_chunk(symbol_list: Vec<SymbolTypeTcc>) -> PacketStatusChunk {
    PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
        type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
        symbol_size: SymbolSizeTypeTcc::TwoBit,
        symbol_list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::{Marshal, Unmarshal};
    use std::time::Duration;

    /// Marshals and reads back the feedback, as the publisher would: (sequence number,
    /// arrival in microseconds after the reference time) for each packet received.
    fn read_back(cc: &TransportLayerCc) -> Vec<(u16, i64)> {
        let raw = cc.marshal().unwrap();
        let cc = TransportLayerCc::unmarshal(&mut &raw[..]).unwrap();
        let mut symbols: Vec<SymbolTypeTcc> = Vec::new();
        for chunk in &cc.packet_chunks {
            match chunk {
                PacketStatusChunk::StatusVectorChunk(v) => symbols.extend(v.symbol_list.iter()),
                PacketStatusChunk::RunLengthChunk(r) => symbols.extend(std::iter::repeat_n(
                    r.packet_status_symbol,
                    r.run_length.into(),
                )),
            }
        }
        let mut deltas = cc.recv_deltas.iter();
        let mut at = 0;
        let mut out = Vec::new();
        for (i, s) in symbols
            .iter()
            .take(cc.packet_status_count.into())
            .enumerate()
        {
            if *s != SymbolTypeTcc::PacketNotReceived {
                at += deltas.next().unwrap().delta;
                out.push((cc.base_sequence_number.wrapping_add(i as u16), at));
            }
        }
        out
    }

    #[test]
    fn arrivals_and_losses_read_back_across_the_wrap() {
        let start = Instant::now();
        let mut r = TwccRecorder::new(start);
        let t0 = start + Duration::from_millis(1000);
        for (i, seq) in (65_530u16..=65_535).chain(0..4).enumerate() {
            if seq == 65_533 || seq == 1 {
                continue;
            }
            r.record(t0 + Duration::from_millis(5 * i as u64), seq, 9);
        }
        let cc = r.feedback(1).unwrap();
        assert_eq!(cc.base_sequence_number, 65_530);
        assert_eq!(cc.packet_status_count, 10);
        assert_eq!(cc.media_ssrc, 9);
        let got = read_back(&cc);
        let seqs: Vec<u16> = got.iter().map(|&(s, _)| s).collect();
        assert_eq!(seqs, [65_530, 65_531, 65_532, 65_534, 65_535, 0, 2, 3]);
        // 5 ms apart, measured from the first arrival.
        let first = got[0].1;
        assert_eq!(got[1].1 - first, 5_000);
        assert_eq!(got[7].1 - first, 45_000);
        // Reported once: the next feedback starts after it.
        assert!(r.feedback(1).is_none());
        r.record(t0 + Duration::from_millis(100), 4, 9);
        assert_eq!(r.feedback(1).unwrap().base_sequence_number, 4);
    }

    #[test]
    fn late_and_far_packets_keep_it_bounded() {
        let start = Instant::now();
        let mut r = TwccRecorder::new(start);
        r.record(start, 10, 1);
        r.record(start, 11, 1);
        r.feedback(1).unwrap();
        // Already reported: not again.
        r.record(start, 10, 1);
        assert_eq!(r.waiting(), 0);
        // A jump far ahead starts over there.
        r.record(start, 10 + 5000, 1);
        assert_eq!(r.waiting(), 1);
        // A long pause between packets is a large delta, still readable.
        r.record(start + Duration::from_secs(2), 10 + 5001, 1);
        let got = read_back(&r.feedback(1).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1 - got[0].1, 2_000_000);
    }
}
