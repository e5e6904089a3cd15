//! Mutations. Every input derives from one corpus entry by a short stack of changes: at the
//! byte level (bit flips, interesting values, inserts, deletes, repeats, truncation, splices
//! with another entry) and, for JSON and SDP, at the level of their tokens and lines, so that
//! most inputs still get past the tokenizer and reach the code behind it.

use crate::rng::Rng;

/// How a target's inputs are shaped, which decides the structured mutations on top of the
/// byte-level ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    Bytes,
    Json,
    Sdp,
}

/// Values that sit on the boundaries parsers get wrong.
const INTERESTING_8: &[u8] = &[
    0, 1, 2, 3, 4, 0x0f, 0x10, 0x1f, 0x20, 0x3f, 0x40, 0x7f, 0x80, 0x81, 0xbf, 0xc0, 0xc8, 0xc9,
    0xdf, 0xe0, 0xfe, 0xff,
];
const INTERESTING_16: &[u16] = &[
    0, 1, 2, 3, 4, 7, 8, 12, 16, 20, 0x7f, 0x80, 0xff, 0x100, 0x3ff, 0x400, 0x5dc, 0x640, 0x641,
    0x7fff, 0x8000, 0xfffe, 0xffff,
];
const INTERESTING_32: &[u32] = &[
    0,
    1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x2112_a442,
    0x8028_0004,
];

/// JSON tokens that tend to break assumptions.
const JSON_VALUES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "1e3",
    "1E400",
    "-1e-400",
    "1.0e15",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udfff\\ud800\"",
    "\"\\\"\"",
    "\"a\\nb\"",
    "\"Patient/x\"",
    "\"Practitioner/dr-1\"",
    "\"https://fhir.example/R4/Patient/p1/_history/2\"",
    "\"é\u{202e}\u{0}\"",
    "{}",
    "[]",
    "{\"a\":1}",
    "[1,[2,[3]]]",
    "\"2026-12-01T01:45:00Z\"",
    "\"2026-02-30T25:61:61+99:99\"",
];

/// SDP values: numbers on boundaries, and words the parsers switch on.
const SDP_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999",
    "",
    " ",
    "IN",
    "IP4",
    "IP6",
    "::1",
    "0.0.0.0",
    "UDP/TLS/RTP/SAVPF",
    "UDP/DTLS/SCTP",
    "webrtc-datachannel",
    "sendrecv",
    "recvonly",
    "inactive",
    "actpass",
    "active",
    "passive",
    "opus/48000/2",
    "VP8/90000",
    "H264/90000",
    "rtx/90000",
    "sha-256",
    "sha-1",
    "send",
    "recv",
    "~",
    ";",
    ",",
    "=",
    ":",
    "a=",
    "\u{0}",
    "é",
];

pub struct Mutator<'a> {
    pub grammar: Grammar,
    /// Tokens worth inserting whole: protocol keywords, field names, attribute names.
    pub dict: &'a [&'a [u8]],
    pub max_len: usize,
}

impl Mutator<'_> {
    /// A new input from `base`, sometimes mixed with `other` (another corpus entry).
    pub fn mutate(&self, rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = base.to_vec();
        let stack = 1 << rng.below(4); // 1, 2, 4 or 8 changes
        for _ in 0..stack {
            let structured = self.grammar != Grammar::Bytes && rng.below(3) != 0;
            if structured {
                match self.grammar {
                    Grammar::Json => json_mutation(rng, &mut out, other, self.dict),
                    Grammar::Sdp => sdp_mutation(rng, &mut out, other, self.dict),
                    Grammar::Bytes => unreachable!("structured mutations are for JSON and SDP"),
                }
            } else {
                self.byte_mutation(rng, &mut out, other);
            }
            out.truncate(self.max_len);
        }
        out
    }

    fn byte_mutation(&self, rng: &mut Rng, out: &mut Vec<u8>, other: &[u8]) {
        let len = out.len();
        if len == 0 {
            out.extend((0..rng.small_len(16)).map(|_| rng.byte()));
            return;
        }
        let at = rng.below(len);
        match rng.below(14) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = rng.byte(),
            2 => out[at] = *rng.pick(INTERESTING_8),
            3 => {
                let v = *rng.pick(INTERESTING_16);
                let b = if rng.chance(2) {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                overwrite(out, at, &b);
            }
            4 => {
                let v = *rng.pick(INTERESTING_32);
                let b = if rng.chance(2) {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                overwrite(out, at, &b);
            }
            5 => {
                out[at] = out[at]
                    .wrapping_add(rng.range(1, 35) as u8)
                    .wrapping_sub(rng.range(0, 35) as u8)
            }
            6 => {
                let n = rng.small_len(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                out.splice(at..at, bytes);
            }
            7 if !self.dict.is_empty() => {
                let word = pick_word(rng, self.dict).to_vec();
                out.splice(at..at, word);
            }
            8 => {
                let n = rng.small_len(len - at);
                out.drain(at..at + n);
            }
            9 => {
                // A chunk repeated: length fields that add up, nesting, long lines.
                let n = rng.small_len((len - at).min(64));
                let chunk = out[at..at + n].to_vec();
                let times = rng.small_len(64);
                let mut rep = Vec::with_capacity(n * times);
                for _ in 0..times {
                    rep.extend_from_slice(&chunk);
                }
                out.splice(at..at, rep);
            }
            10 => out.truncate(at),
            11 if !other.is_empty() => {
                // Splice: our head, the other's tail.
                let from = rng.below(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            12 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = rng.small_len(other.len() - from);
                out.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => {
                // Copy a chunk of ourselves elsewhere, over what is there.
                let n = rng.small_len(len - at);
                let chunk = out[at..at + n].to_vec();
                let to = rng.below(len);
                overwrite(out, to, &chunk);
            }
        }
    }
}

fn pick_word<'a>(rng: &mut Rng, dict: &[&'a [u8]]) -> &'a [u8] {
    dict[rng.below(dict.len())]
}

fn overwrite(out: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        match out.get_mut(at + i) {
            Some(slot) => *slot = *b,
            None => out.push(*b),
        }
    }
}

/// Byte ranges of JSON tokens: strings (with escapes), numbers and words, punctuation.
/// Whitespace is skipped. Invalid UTF-8 or stray bytes become one-byte tokens.
pub fn json_tokens(s: &[u8]) -> Vec<(usize, usize)> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let start = i;
        match s[i] {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'"' => {
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    i += if s[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(s.len());
            }
            c if c == b'-' || c.is_ascii_alphanumeric() || c == b'.' || c == b'+' => {
                while i < s.len()
                    && (s[i].is_ascii_alphanumeric() || matches!(s[i], b'-' | b'+' | b'.'))
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
        tokens.push((start, i));
    }
    tokens
}

fn json_mutation(rng: &mut Rng, out: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let tokens = json_tokens(out);
    if tokens.is_empty() {
        out.extend_from_slice(rng.pick(JSON_VALUES).as_bytes());
        return;
    }
    let (s, e) = *rng.pick(&tokens);
    match rng.below(8) {
        0 => {
            out.splice(s..e, rng.pick(JSON_VALUES).bytes());
        }
        1 if !dict.is_empty() => {
            let mut word = vec![b'"'];
            word.extend_from_slice(pick_word(rng, dict));
            word.push(b'"');
            out.splice(s..e, word);
        }
        2 => {
            // A token from the other entry: values and keys move between messages.
            let theirs = json_tokens(other);
            if let Some(&(os, oe)) = (!theirs.is_empty()).then(|| rng.pick(&theirs)) {
                out.splice(s..e, other[os..oe].iter().copied());
            }
        }
        3 => {
            out.drain(s..e);
        }
        4 => {
            // A run of tokens repeated: duplicate keys, longer arrays.
            let j = (rng.below(tokens.len()) + 1).min(tokens.len());
            let i = tokens.iter().position(|t| t.0 == s).unwrap_or(0);
            if j > i {
                let (a, b) = (tokens[i].0, tokens[j - 1].1);
                let chunk = out[a..b].to_vec();
                out.splice(b..b, chunk);
            }
        }
        5 => {
            // Deep nesting around a value: recursion limits.
            let depth = rng.small_len(300);
            let open = if rng.chance(2) { "[" } else { "{\"a\":" };
            let close = if open == "[" { "]" } else { "}" };
            let mut v = open.repeat(depth).into_bytes();
            v.extend_from_slice(&out[s..e]);
            v.extend(close.repeat(depth).bytes());
            out.splice(s..e, v);
        }
        6 => {
            // Swap two tokens.
            let (s2, e2) = *rng.pick(&tokens);
            if e <= s2 {
                let second = out[s2..e2].to_vec();
                let first = out[s..e].to_vec();
                out.splice(s2..e2, first);
                out.splice(s..e, second);
            }
        }
        _ => {
            // Inside a string: interesting characters.
            if out[s] == b'"' && e - s >= 2 {
                let at = rng.range(s + 1, e - 1);
                let bits: &[&str] = &[
                    "\\u0000",
                    "\\ud800",
                    "\\\\",
                    "\\\"",
                    "/",
                    ":",
                    "%00",
                    "\u{feff}",
                    "\u{10ffff}",
                    "\n",
                ];
                out.splice(at..at, rng.pick(bits).bytes());
            }
        }
    }
}

fn sdp_mutation(rng: &mut Rng, out: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let text = String::from_utf8_lossy(out).into_owned();
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    let other = String::from_utf8_lossy(other);
    let theirs: Vec<&str> = other.split("\r\n").filter(|l| !l.is_empty()).collect();
    let at = rng.below(lines.len());
    match rng.below(8) {
        0 if lines.len() > 1 => {
            lines.remove(at);
        }
        1 => {
            let line = lines[at].clone();
            for _ in 0..rng.small_len(8) {
                lines.insert(at, line.clone());
            }
        }
        2 => {
            let to = rng.below(lines.len());
            lines.swap(at, to);
        }
        3 if !theirs.is_empty() => lines.insert(at, rng.pick(&theirs).to_string()),
        4 if !dict.is_empty() => lines.insert(
            at,
            String::from_utf8_lossy(pick_word(rng, dict)).into_owned(),
        ),
        5 => {
            // A line's end changed: bare \n, \r, or none.
            let ending = *rng.pick(&["\n", "\r", "", "\r\n\r\n"]);
            lines[at].push_str(ending);
        }
        _ => {
            // One field of a line replaced.
            let line = lines[at].clone();
            let cuts: Vec<usize> = line
                .char_indices()
                .filter(|(_, c)| matches!(c, ' ' | ':' | '/' | '=' | ';' | ',' | '-'))
                .map(|(i, _)| i)
                .collect();
            let mut bounds = vec![0];
            for c in cuts {
                bounds.push(c);
                bounds.push(c + 1);
            }
            bounds.push(line.len());
            let k = rng.below(bounds.len() / 2);
            let (s, e) = (bounds[2 * k], bounds[2 * k + 1]);
            let word = if rng.chance(3) && !dict.is_empty() {
                String::from_utf8_lossy(pick_word(rng, dict)).into_owned()
            } else {
                rng.pick(SDP_VALUES).to_string()
            };
            lines[at] = format!("{}{}{}", &line[..s], word, &line[e..]);
        }
    }
    *out = lines.join("\r\n").into_bytes();
}
