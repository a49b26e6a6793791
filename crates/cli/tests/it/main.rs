//! End-to-end tests of the `hotline` binary: the one integration-test binary of this crate.

mod config;
mod endless;
mod exercise;
mod roster;
