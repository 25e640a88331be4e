//! Decoding a BKV heartbeat must not touch the heap: it is the most frequent
//! frame on every connection. Its own test binary, because the counting
//! allocator is process-wide.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use pile_protocol::bkv::{decode_frame, Decoder, Message};
use pile_protocol::{parse_hex, Item};

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
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HEARTBEAT: &str = "fcfe002e0000000000000182200520004869383938363034363331313230373033313934313763562e31723436001fcafcee";

fn allocations_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = allocated();
    let out = f();
    (allocated() - before, out)
}

#[test]
fn decoding_a_heartbeat_allocates_nothing() {
    let bytes = parse_hex(HEARTBEAT).unwrap();
    let (n, frame) = allocations_during(|| decode_frame(&bytes));
    let frame = frame.unwrap();
    assert_eq!(n, 0, "decode_frame allocated {n} time(s)");
    assert!(matches!(frame.message, Message::Heartbeat(_)));

    // The streaming decoder only splits the buffer it was given. The first
    // split of a fresh `BytesMut` moves it to shared storage (one allocation
    // inside `bytes`, once per buffer); from then on frames cost nothing.
    let mut buf = BytesMut::from(&[&bytes[..], &bytes[..]].concat()[..]);
    let mut dec = Decoder::new();
    assert!(matches!(dec.decode(&mut buf), Some(Item::Frame { .. })));
    let (n, item) = allocations_during(|| dec.decode(&mut buf));
    assert!(matches!(item, Some(Item::Frame { .. })));
    assert_eq!(n, 0, "Decoder::decode allocated {n} time(s)");
}

const STATUS_1017: &str = "fcfe0091100000000000018223121400270004010110170a010200000000000000000901038223121400270065019403014a0104013effff030107250301961e28015b030108000301098004010a000004019508e304010b000004010c000104010d000004010e000028015b030108010301098004010a000004019508e304010b000004010c000104010d000004010e000030fcee";
const END_1004: &str = "fcfe007d100000000000018221022500052004010110040a01020000000000000000090103822102250005200301072a03014a01030108000301099804010a003304010b000004010c000004010d000004010e000109012e2024082310172903012f08030112040401850000040186000003018901080184000100000000dbfcee";

#[test]
fn the_tlv_reports_are_read_over_the_frame_bytes_without_copying() {
    for hex in [STATUS_1017, END_1004] {
        let bytes = parse_hex(hex).unwrap();
        // Streaming: the report keeps a slice of the frame the decoder hands
        // out, so after the buffer's one-time move to shared storage nothing
        // is allocated.
        let mut buf = BytesMut::from(&[&bytes[..], &bytes[..]].concat()[..]);
        let mut dec = Decoder::new();
        assert!(matches!(dec.decode(&mut buf), Some(Item::Frame { .. })));
        let (n, item) = allocations_during(|| dec.decode(&mut buf));
        let Some(Item::Frame { frame, .. }) = item else {
            panic!("{item:?}")
        };
        assert!(matches!(
            frame.message,
            Message::StatusReport(_) | Message::ChargeEndReport(_)
        ));
        assert_eq!(n, 0, "Decoder::decode allocated {n} time(s)");
        // One whole frame from a borrowed slice: one copy of the TLV body.
        let (n, frame) = allocations_during(|| decode_frame(&bytes));
        assert!(frame.is_ok());
        assert_eq!(n, 1, "decode_frame allocated {n} time(s)");
    }
}
