//! Feeds arbitrary bytes to the frame splitter and the frame decoders of both directions;
//! the checks live in `tests/it/harness.rs`, shared with `cargo test`.

#![no_main]

#[path = "../../tests/it/fixtures.rs"]
mod fixtures;
#[path = "../../tests/it/harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::frame_decoder(data));
