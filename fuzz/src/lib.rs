//! MetaClinic's fuzz targets: one per parser that faces the outside, run by a small
//! in-process fuzzer on the stable toolchain (`cargo run --release -p metaclinic-fuzz -- all`).
//!
//! Layout:
//! - [`targets`]: the targets, each a harness around the entry point the product uses on
//!   outside input, with its seeds (in code and under `fuzz/seeds/<target>/`) and the
//!   invariants it checks.
//! - [`engine`]: the loop: seeds, then mutated inputs, each under `catch_unwind`; panics on
//!   any thread, hangs and aborts are findings, saved under `target/fuzz-findings/<target>/`.
//! - [`mutate`]: byte, JSON-token and SDP-line mutations; [`rng`]: deterministic randomness
//!   (`--seed`).
//!
//! No coverage instrumentation (that needs nightly flags or a rebuild of every dependency):
//! an input that produces an outcome not seen before (a new error, a new route) joins the
//! corpus instead.

pub mod engine;
pub mod mutate;
pub mod rng;
pub mod targets;
