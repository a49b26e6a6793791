//! End-to-end tests over real QUIC on loopback (one test binary, modules by subject).
//!
//! Relays are mostly run in process, but nodes (and the relays of `relay_process`) run as
//! `hotline` processes: `$HOTLINE_BIN`, else the `hotline` beside this test binary
//! (`target/debug/hotline`). `cargo test --workspace` builds it; `cargo test -p hotline-e2e`
//! alone does not, so run `cargo build -p hotline-cli` first, or those processes run
//! whatever build of `hotline` was made last.

#![allow(clippy::unwrap_used)]

mod exercise;
mod faults;
mod netns;
mod node;
mod relay;
mod relay_process;
mod upgrade;
