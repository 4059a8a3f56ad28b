//! The fast CLIP tokenizer assembled from the slow `vocab.json` + `merges.txt`, after
//! transformers' `convert_slow_tokenizer.py` (`CLIPConverter`), for the SD 1.x / 2.x folders
//! that ship no `tokenizer.json`.

use std::path::Path;

use tokenizers::Tokenizer;

use super::{CLIP_BOS, CLIP_EOS, SpecialTokens, read_text, tok_err};
use crate::error::Result;

/// transformers' `CLIPTokenizer` split pattern.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Builds transformers' fast CLIP tokenizer from the slow `vocab.json` + `merges.txt`
/// (the conversion transformers runs when a folder has no tokenizer.json).
pub(super) fn clip_from_vocab_merges(
    vocab_path: &Path,
    merges_path: &Path,
    special: &SpecialTokens,
) -> Result<Tokenizer> {
    let vocab_text = read_text(vocab_path)?;
    let vocab: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&vocab_text)
        .map_err(|e| tok_err(vocab_path, format!("invalid JSON: {e}")))?;
    let merges_text = read_text(merges_path)?;
    let merges: Vec<serde_json::Value> = merges_text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| {
            let (a, b) = l
                .split_once(' ')
                .ok_or_else(|| tok_err(merges_path, format!("bad merge line `{l}`")))?;
            Ok(serde_json::json!([a, b]))
        })
        .collect::<Result<_>>()?;
    let bos = special.bos.clone().unwrap_or_else(|| CLIP_BOS.to_string());
    let eos = special.eos.clone().unwrap_or_else(|| CLIP_EOS.to_string());
    let unk = special.unk.clone().unwrap_or_else(|| eos.clone());
    let id_of = |token: &str| {
        vocab
            .get(token)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                tok_err(
                    vocab_path,
                    format!("special token `{token}` is not in the vocabulary"),
                )
            })
    };
    let (bos_id, eos_id) = (id_of(&bos)?, id_of(&eos)?);
    let added = |id: u64, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(bos_id, &bos), added(eos_id, &eos)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, eos_id], "cls": [bos, bos_id],
            "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let text = json.to_string();
    text.parse::<Tokenizer>().map_err(|e| {
        tok_err(
            vocab_path,
            format!("cannot build a CLIP tokenizer from vocab.json + merges.txt: {e}"),
        )
    })
}
