//! Tokenizer, through the `tokenizers` crate: loaded from `tokenizer.json`, or built from a
//! GGUF file's vocabulary, merges and pre-tokeniser name, following llama.cpp's rules.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer as HfTokenizer};

use super::gguf::{GgufFile, Value};
use crate::error::{Error, Result};

/// GPT-2's split rule, as llama.cpp writes it.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split rule.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split rule.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Text <-> token ids, with the model's special tokens.
pub struct Tokenizer {
    inner: HfTokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    /// Whether the model expects a BOS token in front of a prompt.
    pub add_bos: bool,
    /// Where the vocabulary came from, for reports.
    pub source: String,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn split(pattern: &str, behavior: SplitDelimiterBehavior) -> Result<PreTokenizerWrapper> {
    let s = Split::new(SplitPattern::Regex(pattern.to_string()), behavior, false).map_err(tok_err)?;
    Ok(PreTokenizerWrapper::Split(s))
}

/// The pre-tokeniser llama.cpp applies for a `tokenizer.ggml.pre` name.
fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false));
    let isolated = SplitDelimiterBehavior::Isolated;
    let seq = |parts: Vec<PreTokenizerWrapper>| PreTokenizerWrapper::Sequence(Sequence::new(parts));
    Ok(match pre {
        // digits one by one, then GPT-2 splitting
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => seq(vec![
            split(r"\p{N}", isolated)?,
            split(GPT2_SPLIT, isolated)?,
            byte_level,
        ]),
        "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" => {
            seq(vec![split(GPT2_SPLIT, isolated)?, byte_level])
        }
        "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "pixtral" | "smaug-bpe" | "dbrx" => {
            seq(vec![split(LLAMA3_SPLIT, isolated)?, byte_level])
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => seq(vec![split(QWEN2_SPLIT, isolated)?, byte_level]),
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer '{other}' is not supported (smollm, gpt2, llama3/llama-bpe, qwen2 are)"
            )));
        }
    })
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path, bos_id: Option<u32>, eos_ids: Vec<u32>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: String| Error::format(path, format!("not a valid tokenizer.json: {why}"));
        // the tokenizers crate panics on some malformed files (a decoder cut short):
        // check the JSON first, and turn what still panics into an error of the file
        serde_json::from_str::<serde_json::Value>(&text).map_err(|e| bad(e.to_string()))?;
        let inner = std::panic::catch_unwind(|| HfTokenizer::from_bytes(text.as_bytes()))
            .map_err(|p| bad(crate::Error::from_panic("tokenizer", p.as_ref()).to_string()))?
            .map_err(|e| bad(e.to_string()))?;
        // BOS is added by the caller when wanted; the file's post-processor is not used.
        let add_bos = tokenizer_config_add_bos(path).unwrap_or(false);
        Ok(Tokenizer {
            inner,
            bos_id,
            eos_ids,
            add_bos,
            source: path.display().to_string(),
        })
    }

    /// Build the tokenizer a GGUF file describes (`tokenizer.ggml.model = "gpt2"`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = &g.path;
        let model = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(Error::format(
                path,
                format!("tokenizer model '{model}' is not supported for GGUF (byte-level BPE 'gpt2' is)"),
            ));
        }
        let tokens: Vec<String> = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::format(path, "tokenizer.ggml.tokens is missing"))?
            .iter()
            .map(|v| v.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::format(path, "tokenizer.ggml.tokens holds a non-string"))?;
        let merges: Vec<(String, String)> = g
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::format(path, "tokenizer.ggml.merges is missing"))?
            .iter()
            .map(|v| {
                let s = v.as_str()?;
                let (a, b) = s.split_once(' ')?;
                Some((a.to_string(), b.to_string()))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| Error::format(path, "tokenizer.ggml.merges holds an entry that is not 'A B'"))?;
        let types: Vec<u64> = g
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let vocab: Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::format(path, format!("tokenizer.ggml.merges: {e}")))?;
        let mut inner = HfTokenizer::new(bpe);
        let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let pre_tokenizer = pre_tokenizer_for(pre).map_err(|e| Error::format(path, format!("tokenizer.ggml.pre: {e}")))?;
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // control (3) and user-defined (4) tokens match whole, before splitting
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(tok, t)| AddedToken::from(tok.clone(), *t == 3))
            .collect();
        inner.add_special_tokens(specials).map_err(tok_err)?;
        let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
        Ok(Tokenizer {
            inner,
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            add_bos: g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            source: format!("{} (GGUF vocabulary, pre-tokenizer '{pre}')", path.display()),
        })
    }

    /// Encode text without any special token added.
    /// Texts longer than this are tokenised piece by piece: the tokenizer's working memory
    /// grows with its input, to gigabytes for one line of tens of megabytes.
    pub const PIECE_BYTES: usize = 1 << 20;

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_in_pieces(&self.inner, text, Self::PIECE_BYTES)
    }

    /// Encode a prompt, with BOS in front when the model asks for it and `bos` allows.
    pub fn encode_prompt(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if bos && self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// The vocabulary entry of one id, as stored (byte-level form).
    pub fn token(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| self.inner.id_to_token(id).unwrap_or_default())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The underlying tokenizer, for writing it out.
    pub fn inner(&self) -> &HfTokenizer {
        &self.inner
    }
}

/// Tokenise `text` in pieces of at most about `max` bytes, cut where pre-tokenisation cuts
/// anyway (after a line break, or before a space, each followed by a letter or digit), so
/// that the ids are those of the whole text; a stretch with no such place is cut at a
/// character boundary.
fn encode_in_pieces(t: &HfTokenizer, text: &str, max: usize) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let cut = if rest.len() <= max { rest.len() } else { piece_end(rest, max) };
        let enc = t.encode_fast(&rest[..cut], false).map_err(tok_err)?;
        ids.extend_from_slice(enc.get_ids());
        rest = &rest[cut..];
    }
    Ok(ids)
}

/// Where to end a piece of at most `max` bytes of `text` (longer than `max`).
fn piece_end(text: &str, max: usize) -> usize {
    let bytes = text.as_bytes();
    let starts_word = |i: usize| bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric());
    let mut space = None;
    for i in (1..=max).rev() {
        if bytes[i - 1] == b'\n' && starts_word(i) {
            return i;
        }
        if space.is_none() && bytes[i] == b' ' && !bytes[i - 1].is_ascii_whitespace() && starts_word(i + 1) {
            space = Some(i);
        }
    }
    space.unwrap_or_else(|| (1..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(max))
}

fn tokenizer_config_add_bos(tokenizer_json: &Path) -> Option<bool> {
    let cfg = tokenizer_json.parent()?.join("tokenizer_config.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cfg).ok()?).ok()?;
    v.get("add_bos_token")?.as_bool()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> HfTokenizer {
        let tokens = ["a", "b", "Ġ", "1", "2", "Ġa", "ab"];
        let vocab: Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = vec![("Ġ".to_string(), "a".to_string()), ("a".to_string(), "b".to_string())];
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().unwrap();
        let mut t = HfTokenizer::new(bpe);
        t.with_pre_tokenizer(Some(pre_tokenizer_for("smollm").unwrap()));
        t
    }

    #[test]
    fn smollm_rule_splits_digits_one_by_one() {
        let t = tiny();
        let ids = t.encode_fast("ab a12", false).unwrap().get_ids().to_vec();
        // "ab" | " a" | "1" | "2"
        assert_eq!(ids, vec![6, 5, 3, 4]);
    }

    #[test]
    fn long_texts_are_tokenised_in_pieces_with_the_ids_of_the_whole() {
        let t = tiny();
        let text = "ab a12 ba\nab  ab\n\n a1 bb ".repeat(40);
        let whole = t.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        for max in [16, 33, 100, 1000] {
            assert_eq!(encode_in_pieces(&t, &text, max).unwrap(), whole, "pieces of {max} bytes");
        }
        // no place to cut: at a character boundary
        let wide = "é".repeat(100);
        let end = piece_end(&wide, 9);
        assert!(end <= 9 && wide.is_char_boundary(end), "{end}");
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused_by_name() {
        let e = pre_tokenizer_for("klingon").err().unwrap();
        assert!(e.to_string().contains("klingon"));
    }
}
