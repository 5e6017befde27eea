//! `cargo fuzz run frame_decode`: a peer's bytes never crash the node.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::frame_decode(data));
