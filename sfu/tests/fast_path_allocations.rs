//! The forwarding fast path allocates nothing per packet: a counting allocator watches this
//! thread while packets go through it in steady state (after each stream's first packet,
//! which may create its state).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use metaclinic_sfu::srtp::{MasterKey, Profile, SrtpReceiver, SrtpSender};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn write_rtp(buffer: &mut [u8], ssrc: u32, sequence_number: u16, payload_len: usize) -> usize {
    buffer[0] = 0x80;
    buffer[1] = 96;
    buffer[2..4].copy_from_slice(&sequence_number.to_be_bytes());
    buffer[4..8].copy_from_slice(&(u32::from(sequence_number) * 3000).to_be_bytes());
    buffer[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buffer[12..12 + payload_len].fill(0xab);
    12 + payload_len
}

#[test]
fn the_counter_sees_an_allocation() {
    assert_eq!(allocations_in(|| drop(std::hint::black_box(Box::new(1u64)))), 1);
}

#[test]
fn srtp_protects_and_unprotects_without_allocating() {
    for profile in [Profile::AeadAes128Gcm, Profile::Aes128CmHmacSha1_80] {
        let key = MasterKey::new(profile, &[7; 16], &vec![9; profile.salt_len()]).unwrap();
        let mut sender = SrtpSender::new(&key).unwrap();
        let mut receiver = SrtpReceiver::new(&key).unwrap();
        let mut buffer = [0u8; 1500];
        let mut round_trip = |ssrc: u32, seq: u16| {
            let len = write_rtp(&mut buffer, ssrc, seq, 1100);
            let sealed = sender.protect(&mut buffer, len).unwrap();
            let opened = receiver.unprotect(&mut buffer[..sealed]).unwrap();
            assert_eq!(opened, len);
        };
        // First packets: each stream's state is created.
        for ssrc in 1..=4 {
            round_trip(ssrc, 65_000);
        }
        let allocations = allocations_in(|| {
            for seq in 65_001..=65_535u16 {
                for ssrc in 1..=4 {
                    round_trip(ssrc, seq);
                }
            }
            for seq in 0..1_000u16 {
                for ssrc in 1..=4 {
                    round_trip(ssrc, seq);
                }
            }
        });
        assert_eq!(allocations, 0, "{profile:?}: allocations per packet");
    }
}
