//! Integration tests of `hotline-proto`, as one test binary (matklad, "Delete Cargo
//! integration tests").
//!
//! - `vectors`: the signature test vectors in `tests/vectors.json`, checked with
//!   ed25519-dalek, with ring (an independent implementation) and with the crate's own API.
//! - `props`: property tests of the decoders, the framing and signing.
//! - `roster`: roster rules, verification against a roster, routing and the clock check.
//! - `limits`: every limit at its edge, and the largest values fit a frame.
//! - `corpus`: the fuzz seed corpus under `fuzz/corpus/`, kept in step with the wire format.
//! - `fixtures` and `harness`: shared with the fuzz targets, which include them by path.
//!
//! Generated files (`tests/vectors.json`, `fuzz/corpus/*/seed-*`) are compared with their
//! generators; `HOTLINE_REGEN_VECTORS=1` rewrites them instead.
//!
//! Randomised tests use proptest with its default 256 cases. On failure proptest prints the
//! minimal failing input and records the failing seed in `proptest-regressions/`, which it
//! replays first on the next run; `PROPTEST_RNG_SEED=<u64>` fixes the seed of a run and
//! `PROPTEST_CASES=<n>` changes the case count.

mod corpus;
mod fixtures;
mod harness;
mod limits;
mod props;
mod roster;
mod vectors;
