//! CLIP's byte-level BPE tokenizer, read from the standard vocab.json + merges.txt.
//!
//! Text is cleaned as transformers' CLIPTokenizer does without ftfy (control characters
//! dropped, whitespace collapsed, lowercased), split with CLIP's pattern
//! (`<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`),
//! each piece's UTF-8 bytes mapped to printable symbols, the last marked `</w>`, and merged
//! by merge rank. Not done: ftfy's mojibake repair and Unicode NFC normalisation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::error::{DiffusionError, Result};
use super::weights::read_json;

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    encoder: HashMap<String, i64>,
    merge_ranks: HashMap<(String, String), usize>,
    byte_symbols: [char; 256],
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
    pub max_length: usize,
}

/// GPT-2/CLIP's reversible map from bytes to printable unicode characters.
fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

impl ClipTokenizer {
    /// Reads `vocab.json` and `merges.txt` from `folder`; the padding token comes from
    /// `special_tokens_map.json` when present (SD 1.x pads with <|endoftext|>, SD 2.x with "!").
    pub fn load(folder: &Path) -> Result<Self> {
        let vocab_path = folder.join("vocab.json");
        let merges_path = folder.join("merges.txt");
        let encoder: HashMap<String, i64> = read_json(&vocab_path)?;
        let merges_text =
            std::fs::read_to_string(&merges_path).map_err(|source| DiffusionError::Io {
                path: merges_path.clone(),
                source,
            })?;
        let mut pad_token = END_OF_TEXT.to_string();
        let special = folder.join("special_tokens_map.json");
        if special.is_file() {
            let map: serde_json::Value = read_json(&special)?;
            match map.get("pad_token") {
                Some(serde_json::Value::String(s)) => pad_token = s.clone(),
                Some(serde_json::Value::Object(o)) => {
                    if let Some(serde_json::Value::String(s)) = o.get("content") {
                        pad_token = s.clone();
                    }
                }
                _ => {}
            }
        }
        Self::from_parts(encoder, &merges_text, &pad_token, &vocab_path, &merges_path)
    }

    fn from_parts(
        encoder: HashMap<String, i64>,
        merges_text: &str,
        pad_token: &str,
        vocab_path: &Path,
        merges_path: &Path,
    ) -> Result<Self> {
        let mut merge_ranks = HashMap::new();
        // like CLIP: skip the "#version" line, keep at most 49152 - 256 - 2 merges
        for (rank, line) in merges_text
            .lines()
            .skip(1)
            .take(49152 - 256 - 2)
            .enumerate()
        {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                    merge_ranks.insert((a.to_string(), b.to_string()), rank);
                }
                _ if line.trim().is_empty() => {}
                _ => {
                    return Err(DiffusionError::BadFile {
                        path: merges_path.to_path_buf(),
                        message: format!("line {} is not `first second`: {line:?}", rank + 2),
                    })
                }
            }
        }
        let id = |tok: &str| -> Result<i64> {
            encoder
                .get(tok)
                .copied()
                .ok_or_else(|| DiffusionError::BadFile {
                    path: vocab_path.to_path_buf(),
                    message: format!("the vocabulary has no `{tok}`"),
                })
        };
        let (bos_id, eos_id, pad_id) = (id(START_OF_TEXT)?, id(END_OF_TEXT)?, id(pad_token)?);
        Ok(ClipTokenizer {
            encoder,
            merge_ranks,
            byte_symbols: bytes_to_unicode(),
            bos_id,
            eos_id,
            pad_id,
            max_length: 77,
        })
    }

    pub fn bos_id(&self) -> i64 {
        self.bos_id
    }
    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Token ids of `text` without start/end tokens.
    pub fn encode_raw(&self, text: &str) -> Vec<i64> {
        let cleaned = clean_text(text);
        let mut ids = Vec::new();
        let mut cache: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for piece in split_pieces(&cleaned) {
            match piece {
                Piece::Special(tok) => ids.push(if tok == START_OF_TEXT {
                    self.bos_id
                } else {
                    self.eos_id
                }),
                Piece::Text(word) => {
                    if let Some(v) = cache.get(word) {
                        ids.extend(v);
                        continue;
                    }
                    let symbols: Vec<String> = word
                        .bytes()
                        .map(|b| self.byte_symbols[b as usize].to_string())
                        .collect();
                    let v: Vec<i64> = self
                        .bpe(symbols)
                        .iter()
                        // CLIP's unknown token is <|endoftext|>
                        .map(|tok| self.encoder.get(tok).copied().unwrap_or(self.eos_id))
                        .collect();
                    ids.extend(&v);
                    cache.insert(word.to_string(), v);
                }
            }
        }
        ids
    }

    /// SD's text input: <|startoftext|>, the text's tokens cut to fit, <|endoftext|>, padding
    /// to `max_length` (77).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![self.bos_id];
        let body = self.encode_raw(text);
        ids.extend(body.iter().take(self.max_length - 2));
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    fn bpe(&self, mut symbols: Vec<String>) -> Vec<String> {
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        loop {
            if symbols.len() < 2 {
                return symbols;
            }
            // lowest-ranked adjacent pair
            let best = symbols
                .windows(2)
                .filter_map(|w| {
                    self.merge_ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|r| (*r, w[0].clone(), w[1].clone()))
                })
                .min();
            let Some((_, first, second)) = best else {
                return symbols;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == first && symbols[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
    }
}

/// Control characters dropped, whitespace runs collapsed to one space, trimmed, lowercased.
fn clean_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if c.is_control() || c == '\u{fffd}' {
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.extend(c.to_lowercase());
    }
    out
}

enum Piece<'a> {
    Special(&'a str),
    Text(&'a str),
}

/// CLIP's pre-tokenisation pattern, by hand: at each position the first alternative that matches.
fn split_pieces(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut i = 0;
    let is_letter = |c: char| c.is_alphabetic();
    let is_number = |c: char| c.is_numeric();
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().expect("non-empty");
        if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        if let Some(tok) = [START_OF_TEXT, END_OF_TEXT]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            pieces.push(Piece::Special(&rest[..tok.len()]));
            i += tok.len();
            continue;
        }
        if c == '\'' {
            if let Some(suffix) = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
                .into_iter()
                .find(|s| rest.starts_with(s))
            {
                pieces.push(Piece::Text(&rest[..suffix.len()]));
                i += suffix.len();
                continue;
            }
        }
        let len = if is_letter(c) {
            rest.char_indices()
                .find(|(_, ch)| !is_letter(*ch))
                .map_or(rest.len(), |(k, _)| k)
        } else if is_number(c) {
            c.len_utf8()
        } else {
            rest.char_indices()
                .find(|(_, ch)| ch.is_whitespace() || is_letter(*ch) || is_number(*ch))
                .map_or(rest.len(), |(k, _)| k)
        };
        pieces.push(Piece::Text(&rest[..len]));
        i += len;
    }
    pieces
}
