//! The RTCP the application acts on: keyframe requests (PLI, FIR), the reports quality
//! figures are read from, and NACKs (answered by rtc's responder; we count them).
//!
//! rtc 0.21 ends its interceptor chain with a terminus that drops every inbound RTCP packet
//! unless an interceptor marked it `DeliverToApplication`, and none of its own interceptors
//! marks anything. Without this one, a subscriber's keyframe request never reaches the SFU's
//! forwarding, and the SFU's never reaches a publisher. It sits application-most, after the
//! interceptors that consume feedback themselves (NACK, TWCC), and passes everything on.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;

/// Its place in the chain: after every built-in slot (the highest is 13 000).
pub(super) const SLOT: usize = 20_000;

#[derive(Default)]
pub(super) struct DeliverFeedback {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn wanted(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let p = p.as_any();
        p.downcast_ref::<PictureLossIndication>().is_some()
            || p.downcast_ref::<FullIntraRequest>().is_some()
            || p.downcast_ref::<ReceiverReport>().is_some()
            || p.downcast_ref::<SenderReport>().is_some()
            || p.downcast_ref::<TransportLayerNack>().is_some()
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
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
