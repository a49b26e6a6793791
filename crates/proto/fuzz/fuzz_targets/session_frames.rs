//! Feeds a relay session, after its handshake, an arbitrary stream of node frames and
//! applies, frame by frame, the pure steps `hotline-relay`'s session takes (authorship,
//! verification against the roster, the clock check, routing, the answers it writes); the
//! checks live in `tests/it/harness.rs`, shared with `cargo test`.

#![no_main]

#[path = "../../tests/it/fixtures.rs"]
mod fixtures;
#[path = "../../tests/it/harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::session_frames(data);
});
