//! A byte-pair-encoding token counter for OpenAI's `o200k_base` vocabulary, kept small in
//! memory: the 200k tokens live in one byte arena, found through an open-addressing table of
//! ranks (about 5 MiB in all, where a general tokenizer holding an encoder map, a decoder map and
//! a sorted copy takes ten times that). It only counts: the gateway never needs the token ids.

use base64::Engine;
use fancy_regex::Regex;

/// The vocabulary: one `base64(token) rank` line per token, ranks 0, 1, 2, ... in order.
const VOCABULARY: &str = include_str!("../../data/o200k_base.tiktoken");

/// How `o200k_base` splits text into pieces before merging bytes (tiktoken's pattern).
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);

/// No rank: the pair is not a token.
const NONE: u32 = u32::MAX;

pub struct Bpe {
    /// Every token's bytes, in rank order.
    arena: Vec<u8>,
    /// Where token `r` ends in `arena` (it starts where token `r - 1` ends).
    ends: Vec<u32>,
    /// Open addressing by a hash of the bytes: `rank + 1`, or 0 for an empty slot.
    slots: Vec<u32>,
    split: Regex,
}

impl Bpe {
    pub fn o200k_base() -> Result<Bpe, String> {
        let lines = VOCABULARY.lines().filter(|l| !l.is_empty());
        let n = VOCABULARY.lines().filter(|l| !l.is_empty()).count();
        let mut arena = Vec::with_capacity(n * 7);
        let mut ends = Vec::with_capacity(n);
        let b64 = base64::engine::general_purpose::STANDARD;
        for (i, line) in lines.enumerate() {
            let (token, rank) = line
                .split_once(' ')
                .ok_or_else(|| format!("vocabulary line {}: no rank", i + 1))?;
            if rank.parse::<usize>().ok() != Some(i) {
                return Err(format!("vocabulary line {}: rank {rank}, not {i}", i + 1));
            }
            b64.decode_vec(token, &mut arena)
                .map_err(|e| format!("vocabulary line {}: {e}", i + 1))?;
            ends.push(u32::try_from(arena.len()).map_err(|_| "vocabulary too large")?);
        }
        arena.shrink_to_fit();
        let size = (n * 2).next_power_of_two();
        let mut bpe = Bpe {
            arena,
            ends,
            slots: vec![0; size],
            split: Regex::new(PATTERN).map_err(|e| e.to_string())?,
        };
        for r in 0..n {
            let mut at = bpe.slot_of(bpe.token(r));
            while bpe.slots[at] != 0 {
                at = (at + 1) & (size - 1);
            }
            bpe.slots[at] = r as u32 + 1;
        }
        Ok(bpe)
    }

    fn token(&self, rank: usize) -> &[u8] {
        let start = if rank == 0 { 0 } else { self.ends[rank - 1] } as usize;
        &self.arena[start..self.ends[rank] as usize]
    }

    fn slot_of(&self, bytes: &[u8]) -> usize {
        // FNV-1a: tokens are short, and this runs once per candidate pair.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h ^ (h >> 29)) as usize & (self.slots.len() - 1)
    }

    /// The rank of a byte string, or `NONE` when it is not a token.
    fn rank(&self, bytes: &[u8]) -> u32 {
        let mask = self.slots.len() - 1;
        let mut at = self.slot_of(bytes);
        loop {
            match self.slots[at] {
                0 => return NONE,
                r if self.token(r as usize - 1) == bytes => return r - 1,
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Tokens in `text`, as `o200k_base` encodes it without special tokens.
    pub fn count(&self, text: &str) -> usize {
        let mut n = 0;
        let mut bounds = Vec::new();
        for piece in self.split.find_iter(text) {
            let Ok(piece) = piece else {
                // The pattern has no backtracking blow-up on any input; should it ever give
                // up, the rest is estimated by bytes.
                n += text.len().div_ceil(4);
                break;
            };
            let bytes = piece.as_str().as_bytes();
            n += if self.rank(bytes) != NONE {
                1
            } else {
                self.merged_len(bytes, &mut bounds)
            };
        }
        n
    }

    /// How many tokens byte-pair merging leaves of `piece`: starting from single bytes, the
    /// adjacent pair whose concatenation has the lowest rank is joined, until no pair is a token.
    fn merged_len(&self, piece: &[u8], bounds: &mut Vec<(usize, u32)>) -> usize {
        if piece.len() < 2 {
            return piece.len();
        }
        // bounds[i] = (where part i starts, rank of part i joined with part i + 1).
        bounds.clear();
        bounds.extend((0..piece.len() - 1).map(|i| (i, self.rank(&piece[i..i + 2]))));
        bounds.push((piece.len() - 1, NONE));
        bounds.push((piece.len(), NONE));
        let joined = |b: &[(usize, u32)], i: usize| {
            if i + 3 < b.len() {
                self.rank(&piece[b[i].0..b[i + 3].0])
            } else {
                NONE
            }
        };
        loop {
            let parts = bounds.len() - 1;
            let Some((i, _)) = bounds[..parts]
                .iter()
                .enumerate()
                .filter(|(_, (_, r))| *r != NONE)
                .min_by_key(|(i, (_, r))| (*r, *i))
            else {
                return parts;
            };
            if i > 0 {
                bounds[i - 1].1 = joined(bounds, i - 1);
            }
            bounds[i].1 = joined(bounds, i);
            bounds.remove(i + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same counts as tiktoken's own `o200k_base`, over text of many kinds.
    #[test]
    fn counts_exactly_as_tiktoken_does() {
        let ours = Bpe::o200k_base().unwrap();
        let theirs = tiktoken_rs::o200k_base().unwrap();
        let samples = [
            "",
            "hello world",
            "Hello, World! It's 2026; we're here.",
            "antidisestablishmentarianism",
            "  leading and trailing spaces   ",
            "line one\nline two\r\n\r\n  indented\n",
            "numbers 1234567 and 3.14159, -42",
            "fn main() { println!(\"{}\", x.iter().map(|v| v * 2).sum::<i64>()); }",
            "{\"type\":\"function\",\"arguments\":{\"city\":\"Paris\",\"units\":\"metric\"}}",
            "Grüße aus München — naïve café, ΑΒΓ, Москва, 東京タワー, 서울, مرحبا",
            "emoji 🎉🚀 and combined 👩‍👩‍👧 ZWJ",
            "WHAT'S UP? I'LL SEE YOU'VE DONE IT'D",
            "tabs\tand\u{a0}non-breaking\u{2003}spaces",
            "a\u{0}b\u{7f}c",
        ];
        for text in samples {
            assert_eq!(
                ours.count(text),
                theirs.encode_ordinary(text).len(),
                "{text:?}"
            );
        }
        // A long stretch with every byte pattern the merges meet.
        let mut long = String::new();
        for i in 0..3000u32 {
            if let Some(c) = char::from_u32(0x20 + (i * 7919) % 0x3000) {
                long.push(c);
            }
            if i % 13 == 0 {
                long.push(' ');
            }
        }
        assert_eq!(ours.count(&long), theirs.encode_ordinary(&long).len());
    }
}
