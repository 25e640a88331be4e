//! Decoding a 0x21 heartbeat must not touch the heap: a counting global
//! allocator (own test binary, so no other test's allocations interfere).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pile_protocol::ap3000::{
    decode_frame, Direction, Frame, Heartbeat, Message, PhysicalId, PortStatus,
};

struct Counting;

thread_local! {
    // Per thread: the test harness runs tests (and captures their output) on other threads,
    // whose allocations are not the code under test's.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the slot may already be gone while a thread shuts down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocated() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_a_heartbeat_allocates_nothing() {
    let ports = [PortStatus::IDLE; 16];
    let hb = Heartbeat::new(2200, &ports, 0, 90).unwrap();
    let bytes = Frame::heartbeat(PhysicalId(0x04AB373B), 1, hb).to_vec();
    // The vendor's own example too.
    let vendor = pile_protocol::parse_hex("444e5910003b37ab0401002198080200000905ee02").unwrap();

    let before = allocated();
    let a = decode_frame(&bytes, Direction::FromDevice);
    let b = decode_frame(&vendor, Direction::FromDevice);
    let after = allocated();

    assert!(matches!(
        a,
        Ok(Frame {
            message: Message::Heartbeat(_),
            ..
        })
    ));
    assert!(matches!(
        b,
        Ok(Frame {
            message: Message::Heartbeat(_),
            ..
        })
    ));
    assert_eq!(after - before, 0, "allocations while decoding a heartbeat");
}
