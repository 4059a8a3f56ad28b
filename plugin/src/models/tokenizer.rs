//! Prompt tokenization, reproducing the diffusers pipelines'
//! `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)` with transformers'
//! CLIP tokenizer.
//!
//! Read from the pipeline's `tokenizer/` folder:
//! - `tokenizer.json` (the `tokenizers` library's format), or, when it is absent (most SD 1.x and
//!   2.x repositories only ship the "slow" files), `vocab.json` + `merges.txt`, from which the same
//!   CLIP tokenizer transformers' `CLIPTokenizerFast` converter builds is assembled: NFC, `\s+` →
//!   ` `, lowercase; CLIP's split regex + byte-level; BPE with the `</w>` end-of-word suffix;
//!   `<|startoftext|>` … `<|endoftext|>` around the tokens;
//! - the special tokens (`bos_token`, `eos_token`, `pad_token`) from `tokenizer_config.json`, else
//!   `special_tokens_map.json` (a value is a string or an object with `content`), else CLIP's
//!   defaults. SD 1.x pads with `<|endoftext|>`, SD 2.x with `!`.
//!
//! As transformers does, the special tokens are registered as special *added* tokens, so a
//! literal `!` in an SD 2.x prompt becomes the pad id and is never merged by BPE.

use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{DiffusionError, Result};

mod convert_slow_tokenizer;
use convert_slow_tokenizer::clip_from_vocab_merges;

/// A prompt as token ids, padded to the text encoder's context length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// `[bos, ..., eos, pad, ...]`, exactly `max_length` ids.
    pub ids: Vec<u32>,
    /// True when the prompt had more than `max_length - 2` BPE tokens and was cut.
    pub truncated: bool,
    /// The number of ids before truncation and padding, bos and eos included (2 for an empty
    /// prompt); more than `max_length` exactly when `truncated`.
    pub token_count: usize,
}

/// The pipeline's tokenizer (`tokenizer/tokenizer.json` + `tokenizer_config.json`).
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    /// The file the tokenizer was built from (named by errors).
    path: PathBuf,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// Whether the tokenizer's post-processor adds bos/eos itself (it does for every CLIP
    /// tokenizer.json); if not, they are added here.
    post_processor_adds_special: bool,
}

/// The special tokens named by the tokenizer configs.
#[derive(Debug, Default)]
struct SpecialTokens {
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
    unk: Option<String>,
}

const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";
/// JSON files larger than this are refused rather than read (a real CLIP tokenizer.json is ~2 MB).
const MAX_JSON_BYTES: u64 = 256 * 1024 * 1024;

fn tok_err(path: &Path, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::Tokenizer {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_text(path: &Path) -> Result<String> {
    let len = crate::loading::model_files::len(path).map_err(|e| DiffusionError::io(path, e))?;
    if len > MAX_JSON_BYTES {
        return Err(tok_err(
            path,
            format!("file is {len} bytes, larger than any tokenizer file"),
        ));
    }
    crate::loading::model_files::read_to_string(path).map_err(|e| DiffusionError::io(path, e))
}

/// A special-token value of a transformers config: `"<|endoftext|>"` or `{"content": ...}`.
fn token_value(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn read_special_tokens(path: &Path) -> Result<Option<SpecialTokens>> {
    if !crate::loading::model_files::is_file(path) {
        return Ok(None);
    }
    let text = read_text(path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| tok_err(path, format!("invalid JSON: {e}")))?;
    let get = |key: &str| json.get(key).and_then(token_value);
    Ok(Some(SpecialTokens {
        bos: get("bos_token"),
        eos: get("eos_token"),
        pad: get("pad_token"),
        unk: get("unk_token"),
    }))
}

impl PromptTokenizer {
    /// Loads the tokenizer of a diffusers pipeline from its `tokenizer/` folder `dir`; prompts are
    /// padded/truncated to `max_length` (the text encoder's `max_position_embeddings`, 77 for
    /// CLIP).
    ///
    /// Reads `dir/tokenizer.json`, or `dir/vocab.json` + `dir/merges.txt` when there is no
    /// tokenizer.json (see the module docs), and the special tokens from
    /// `dir/tokenizer_config.json`, else `dir/special_tokens_map.json`. Any padding/truncation
    /// configured inside tokenizer.json is ignored: [`PromptTokenizer::encode`] does both the way
    /// transformers does. bos/eos ids are the ones the tokenizer's post-processor adds (for CLIP:
    /// `<|startoftext|>`/`<|endoftext|>`), else the configured `bos_token`/`eos_token`.
    ///
    /// # Errors
    /// [`DiffusionError::MissingFile`] naming `dir/tokenizer.json` when neither tokenizer.json nor
    /// vocab.json + merges.txt exist; [`DiffusionError::Tokenizer`] naming the file when it cannot
    /// be parsed, or when the pad/bos/eos token is not in the vocabulary; [`DiffusionError::Io`].
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self> {
        if max_length < 2 {
            return Err(tok_err(
                dir,
                format!("max_length {max_length} leaves no room for bos and eos"),
            ));
        }
        let config = read_special_tokens(&dir.join("tokenizer_config.json"))?;
        let map = read_special_tokens(&dir.join("special_tokens_map.json"))?;
        let pick = |f: fn(&SpecialTokens) -> Option<String>| {
            config
                .as_ref()
                .and_then(f)
                .or_else(|| map.as_ref().and_then(f))
        };
        let special = SpecialTokens {
            bos: pick(|s| s.bos.clone()),
            eos: pick(|s| s.eos.clone()),
            pad: pick(|s| s.pad.clone()),
            unk: pick(|s| s.unk.clone()),
        };

        let json_path = dir.join("tokenizer.json");
        let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let (mut tokenizer, path) = if crate::loading::model_files::is_file(&json_path) {
            let text = read_text(&json_path)?;
            let tokenizer = text
                .parse::<Tokenizer>()
                .map_err(|e| tok_err(&json_path, e.to_string()))?;
            (tokenizer, json_path)
        } else if crate::loading::model_files::is_file(&vocab_path)
            && crate::loading::model_files::is_file(&merges_path)
        {
            tracing::debug!(
                "{}: no tokenizer.json, building CLIP's tokenizer from vocab.json + merges.txt",
                dir.display()
            );
            (
                clip_from_vocab_merges(&vocab_path, &merges_path, &special)?,
                vocab_path,
            )
        } else {
            return Err(DiffusionError::MissingFile {
                path: json_path,
                what: "the prompt tokenizer (tokenizer.json, or CLIP's vocab.json + merges.txt)"
                    .into(),
            });
        };
        tokenizer
            .with_truncation(None)
            .map_err(|e| tok_err(&path, format!("cannot disable truncation: {e}")))?;
        tokenizer.with_padding(None);

        // Register the configured special tokens (that the vocabulary knows) as special added
        // tokens, as transformers does: they are then matched before BPE, never merged.
        let already: Vec<String> = tokenizer
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        let to_add: Vec<AddedToken> = [&special.bos, &special.eos, &special.pad]
            .into_iter()
            .flatten()
            .filter(|t| !already.contains(t) && tokenizer.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        if !to_add.is_empty() {
            tokenizer
                .add_special_tokens(to_add)
                .map_err(|e| tok_err(&path, format!("cannot register the special tokens: {e}")))?;
        }

        // bos/eos: what the post-processor wraps an empty prompt in.
        let empty = tokenizer
            .encode("", true)
            .map_err(|e| tok_err(&path, format!("cannot encode an empty prompt: {e}")))?;
        let (bos_id, eos_id, post_processor_adds_special) = match empty.get_ids() {
            [bos, .., eos] => (*bos, *eos, true),
            _ => {
                let id = |token: Option<&String>, default: &str| {
                    let token = token.map_or(default, String::as_str);
                    tokenizer.token_to_id(token).ok_or_else(|| {
                        tok_err(
                            &path,
                            format!("special token `{token}` is not in the vocabulary"),
                        )
                    })
                };
                (
                    id(special.bos.as_ref(), CLIP_BOS)?,
                    id(special.eos.as_ref(), CLIP_EOS)?,
                    false,
                )
            }
        };
        // transformers' CLIPTokenizer pads with `<|endoftext|>` unless the config says otherwise.
        let pad_id = match &special.pad {
            Some(pad) => tokenizer.token_to_id(pad).ok_or_else(|| {
                tok_err(&path, format!("pad token `{pad}` is not in the vocabulary"))
            })?,
            None => eos_id,
        };
        tracing::debug!(
            "tokenizer {}: bos {bos_id}, eos {eos_id}, pad {pad_id}, max_length {max_length}",
            path.display()
        );
        Ok(Self {
            tokenizer,
            path,
            max_length,
            bos_id,
            eos_id,
            pad_id,
            post_processor_adds_special,
        })
    }

    /// Tokenizes one prompt into exactly `max_length` ids, as
    /// `tokenizer(prompt, padding="max_length", max_length=..., truncation=True)` does:
    /// `[bos, tokens..., eos]`; if longer than `max_length`, the first `max_length - 2` tokens are
    /// kept and eos appended (`truncated` is then true and a warning naming the dropped text is
    /// logged, as diffusers does); then right-padded with the pad id. An empty prompt gives
    /// `[bos, eos, pad, ...]`.
    ///
    /// # Errors
    /// [`DiffusionError::Tokenizer`] if the tokenizer fails on the input.
    pub fn encode(&self, prompt: &str) -> Result<TokenizedPrompt> {
        let encoding = self
            .tokenizer
            .encode(prompt, self.post_processor_adds_special)
            .map_err(|e| tok_err(&self.path, format!("cannot tokenize {prompt:?}: {e}")))?;
        let mut ids = Vec::with_capacity(self.max_length.max(encoding.len() + 2));
        if !self.post_processor_adds_special {
            ids.push(self.bos_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        if !self.post_processor_adds_special {
            ids.push(self.eos_id);
        }
        let token_count = ids.len();
        let truncated = token_count > self.max_length;
        if truncated {
            // The first dropped token is ids[max_length - 1]; find where it starts in the prompt.
            let index = if self.post_processor_adds_special {
                self.max_length - 1
            } else {
                self.max_length - 2
            };
            let dropped = encoding
                .get_offsets()
                .get(index)
                .and_then(|&(start, _)| prompt.get(start..));
            tracing::warn!(
                "the following part of the prompt was truncated because the text encoder only \
                 handles sequences up to {} tokens: {:?}",
                self.max_length,
                dropped.unwrap_or("?")
            );
            ids.truncate(self.max_length - 1);
            ids.push(self.eos_id);
        }
        ids.resize(self.max_length, self.pad_id);
        Ok(TokenizedPrompt {
            ids,
            truncated,
            token_count,
        })
    }

    /// The padded length of every [`TokenizedPrompt`].
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id every prompt starts with (`<|startoftext|>` for CLIP).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The id ending every prompt (`<|endoftext|>` for CLIP).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id prompts are right-padded with (`<|endoftext|>` for SD 1.x, `!` for SD 2.x).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The largest id the tokenizer can produce (vocabulary and added tokens): the text
    /// encoder's `vocab_size` must exceed it.
    pub fn max_id(&self) -> u32 {
        self.tokenizer
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// The file the tokenizer was read from (`tokenizer.json`, or `vocab.json` when built from
    /// vocab.json + merges.txt).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}
