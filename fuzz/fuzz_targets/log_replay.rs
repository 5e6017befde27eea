//! `cargo fuzz run log_replay`: a damaged queue log never crashes the node at start, and
//! replay keeps every whole record.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::log_replay(data));
