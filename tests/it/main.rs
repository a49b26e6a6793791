//! End-to-end tests over real QUIC on loopback (one test binary, modules by subject).

#![allow(clippy::unwrap_used)]

mod faults;
mod netns;
mod node;
mod relay;
mod relay_process;
