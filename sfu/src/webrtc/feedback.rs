//! The RTCP the application acts on: keyframe requests (PLI, FIR) and the reports quality
//! figures are read from (NACKs are answered inside the chain, see `nack_filter`). It also
//! reads the bandwidth towards the remote side off the chain: the send-side estimate (GCC
//! over transport-wide feedback) as the congestion controller announces it, and the
//! remote's REMB where it sends that instead.
//!
//! rtc 0.21 ends its interceptor chain with a terminus that drops every inbound RTCP packet
//! unless an interceptor marked it `DeliverToApplication`, and none of its own interceptors
//! marks anything. Without this one, a subscriber's keyframe request never reaches the SFU's
//! forwarding, and the SFU's never reaches a publisher. It sits application-most, after the
//! interceptors that consume feedback themselves (NACK, TWCC), and passes everything on.
//! Once the forwarding fast path sends the connection's RTP (`fast`), it takes the NACKs and
//! transport-wide feedback out of the chain and hands them over through [`ChainShared`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;

/// Its place in the chain: after every built-in slot (the highest is 13 000).
pub(super) const SLOT: usize = 20_000;
/// Feedback waiting for the fast path, at most (it is taken after every datagram).
const MAX_FAST_FEEDBACK: usize = 256;

/// What the interceptor chain tells the peer: the bandwidth towards the remote side, and
/// the NACKs it received.
#[derive(Debug, Default)]
pub(super) struct ChainShared {
    pub bandwidth: BandwidthShared,
    pub nacks: super::nack_policy::NackCounters,
    /// The fast path sends this connection's RTP: NACKs and transport-wide feedback go to it.
    pub fast: AtomicBool,
    pub fast_feedback: Mutex<VecDeque<super::fast::FastFeedback>>,
}

impl ChainShared {
    /// The feedback the chain set aside for the fast path since the last call.
    pub fn take_fast_feedback(&self) -> VecDeque<super::fast::FastFeedback> {
        match self.fast_feedback.lock() {
            Ok(mut queue) if !queue.is_empty() => std::mem::take(&mut *queue),
            _ => VecDeque::new(),
        }
    }

    /// Takes NACKs and transport-wide feedback out of `packets` for the fast path.
    fn set_aside(&self, packets: &mut Vec<Box<dyn rtc::rtcp::Packet>>) {
        let Ok(mut queue) = self.fast_feedback.lock() else {
            return;
        };
        packets.retain(|p| {
            let p = p.as_any();
            let feedback = if let Some(nack) = p.downcast_ref::<TransportLayerNack>() {
                super::fast::FastFeedback::Nack(nack.clone())
            } else if let Some(cc) = p.downcast_ref::<TransportLayerCc>() {
                super::fast::FastFeedback::TransportCc(cc.clone())
            } else {
                return true;
            };
            if queue.len() < MAX_FAST_FEEDBACK {
                queue.push_back(feedback);
            }
            false
        });
    }
}

/// What the chain learned about the bandwidth towards the remote side.
#[derive(Debug, Default)]
pub(super) struct BandwidthShared {
    /// The congestion controller's target, bits per second.
    pub target_bps: AtomicU64,
    /// The remote sends transport-wide feedback: the target is a measurement.
    pub twcc_seen: AtomicBool,
    /// The remote's latest REMB, bits per second (0: none).
    pub remb_bps: AtomicU64,
    /// The queue building up on the path towards the remote, milliseconds (from the
    /// transport-wide feedback's arrival times).
    pub queue_delay_ms: Arc<AtomicU64>,
    /// What the remote reported as arrived over the last second, bits per second.
    pub delivered_bps: Arc<AtomicU64>,
}

impl BandwidthShared {
    /// The estimate to allocate by: GCC's once feedback flows, else REMB, else none.
    pub fn estimate_bps(&self) -> Option<u64> {
        if self.twcc_seen.load(Ordering::Relaxed) {
            return Some(self.target_bps.load(Ordering::Relaxed));
        }
        Some(self.remb_bps.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }
}

#[derive(Default)]
pub(super) struct DeliverFeedback {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    shared: Arc<ChainShared>,
}

impl DeliverFeedback {
    pub fn new(shared: Arc<ChainShared>) -> Self {
        DeliverFeedback {
            shared,
            ..Default::default()
        }
    }

    fn observe(&self, msg: &TaggedPacket) {
        if let Some(Attribute::TargetBitrateChanged { bits_per_second }) =
            msg.message.get(&Attribute::TargetBitrateChanged {
                bits_per_second: 0.0,
            })
        {
            self.shared
                .bandwidth
                .target_bps
                .store(bits_per_second.max(0.0) as u64, Ordering::Relaxed);
        }
        let Packet::Rtcp(packets) = &msg.message.packet else {
            return;
        };
        for p in packets {
            let p = p.as_any();
            if p.downcast_ref::<TransportLayerCc>().is_some() {
                self.shared
                    .bandwidth
                    .twcc_seen
                    .store(true, Ordering::Relaxed);
            } else if let Some(remb) = p.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                let bps = f64::from(remb.bitrate);
                if bps.is_finite() && bps > 0.0 {
                    self.shared
                        .bandwidth
                        .remb_bps
                        .store(bps.min(1e10) as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

fn wanted(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let p = p.as_any();
        p.downcast_ref::<PictureLossIndication>().is_some()
            || p.downcast_ref::<FullIntraRequest>().is_some()
            || p.downcast_ref::<ReceiverReport>().is_some()
            || p.downcast_ref::<SenderReport>().is_some()
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        self.observe(&msg);
        if self.shared.fast.load(Ordering::Relaxed)
            && let Packet::Rtcp(packets) = &mut msg.message.packet
        {
            self.shared.set_aside(packets);
            if packets.is_empty() {
                // All of it was for the fast path (an empty compound means something else
                // in the chain).
                return Ok(());
            }
        }
        if let Packet::Rtcp(packets) = &msg.message.packet
            && wanted(packets)
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for DeliverFeedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
