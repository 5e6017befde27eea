//! `cargo fuzz run manifest_parse`: an operator's typo never crashes the CLI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::manifest_parse(data));
