//! The targets: one per parser that faces the outside. Each feeds the bytes to the entry point
//! the product itself uses on outside input, and checks cheap invariants on what comes back
//! (a broken one panics, like the parser would). Seeds come from code (`seeds`) and from
//! `fuzz/seeds/<target>/`.

use std::path::PathBuf;

use crate::mutate::Grammar;
use crate::rng::fnv1a;

mod client_message;
mod datagram;
mod fhir;
mod ice_tcp;
mod jwks;
mod jwt;
pub mod packets;
mod peer;
mod pose;

/// A target's state between inputs (a WebRTC peer's setup, a node, a verifier).
pub trait Harness {
    /// Run one input; return a coarse fingerprint of the outcome (see [`outcome`]).
    fn run(&mut self, data: &[u8]) -> u64;
}

impl<F: FnMut(&[u8]) -> u64> Harness for F {
    fn run(&mut self, data: &[u8]) -> u64 {
        self(data)
    }
}

pub struct Target {
    pub name: &'static str,
    /// The product's entry point this target drives.
    pub entry: &'static str,
    pub grammar: Grammar,
    pub max_len: usize,
    /// Tokens worth inserting whole.
    pub dict: &'static [&'static [u8]],
    /// Seeds built in code (more may lie in `fuzz/seeds/<name>/`).
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub build: fn() -> Box<dyn Harness>,
}

impl Target {
    /// `fuzz/seeds/<name>/`.
    pub fn seed_dir(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(self.name)
    }

    /// The seeds from code, then those from files (in name order).
    pub fn all_seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds = (self.seeds)();
        if let Ok(dir) = std::fs::read_dir(self.seed_dir()) {
            let mut files: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
            files.sort();
            seeds.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
        }
        if seeds.is_empty() {
            seeds.push(Vec::new());
        }
        seeds
    }
}

/// Every target, in the order `all` runs them.
pub fn all() -> Vec<Target> {
    vec![
        datagram::demux(),
        datagram::stun(),
        datagram::rtp(),
        datagram::rtcp(),
        ice_tcp::target(),
        pose::target(),
        client_message::target(),
        peer::offer(),
        peer::answer(),
        peer::candidate(),
        peer::datagram(),
        fhir::appointment(),
        fhir::practitioner_role(),
        jwt::target(),
        jwks::jwks(),
        jwks::discovery(),
    ]
}

pub fn find(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

/// A fingerprint of an outcome described in words, with what varies with the input left
/// out: digits, and everything from the first quote or parenthesis on (where messages quote
/// the input), so that "line 3 column 7" and "line 4 column 1" count as one.
pub fn outcome(parts: &[&str]) -> u64 {
    let mut coarse = String::new();
    for part in parts {
        let head = part.split(['`', '"', '(']).next().unwrap_or("");
        coarse.extend(head.chars().filter(|c| !c.is_ascii_digit()).take(80));
        coarse.push('|');
    }
    fnv1a(coarse.as_bytes())
}

/// `bytes` as text the way a WebSocket text frame or an HTTP body reaches the parser: frames
/// are UTF-8 already, so invalid sequences are replaced rather than wasted.
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
