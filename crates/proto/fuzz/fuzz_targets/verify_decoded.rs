//! Decodes a signed envelope, receipt, roster or authentication proof (selected by the first
//! byte) and verifies it against the fixture roster and the pinned roster key; the checks
//! live in `tests/it/harness.rs`, shared with `cargo test`.

#![no_main]

#[path = "../../tests/it/fixtures.rs"]
mod fixtures;
#[path = "../../tests/it/harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::verify_decoded(data));
