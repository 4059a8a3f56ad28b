//! STUB (owned by the loader helper): prompt tokenization.
use std::path::Path;

/// A prompt as token ids, padded to the text encoder's context length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// `[bos, ..., eos, pad, ...]`, exactly `max_length` ids.
    pub ids: Vec<u32>,
    /// True when the prompt had more than `max_length - 2` BPE tokens and was cut.
    pub truncated: bool,
}

/// The pipeline's tokenizer (`tokenizer/tokenizer.json` + `tokenizer_config.json`).
pub struct PromptTokenizer {}

impl PromptTokenizer {
    /// Loads `dir/tokenizer.json` and the pad token from `dir/tokenizer_config.json` or
    /// `dir/special_tokens_map.json`; prompts are padded/truncated to `max_length` (77 for CLIP).
    pub fn from_dir(dir: &Path, max_length: usize) -> crate::Result<Self> {
        let _ = (dir, max_length);
        todo!()
    }
    /// Tokenizes one prompt.
    pub fn encode(&self, prompt: &str) -> crate::Result<TokenizedPrompt> {
        let _ = prompt;
        todo!()
    }
}
