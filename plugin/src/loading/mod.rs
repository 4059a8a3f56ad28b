//! Loading a model from disk: a diffusers-layout folder (`model_index.json` and one folder per
//! component), its safetensors weights (checked against the shapes the code expects; pickles
//! refused), the embedded default model, and the opt-in Hugging Face Hub download.
//!
//! | file | does |
//! |---|---|
//! | `folder.rs` | reads `model_index.json`, finds each component's config and weights, names the family |
//! | `weights.rs` | safetensors headers read and checked without touching the data; a component's weight files |
//! | `model_loading_utils.rs` | the one checking `VarBuilder` backend (missing / mis-shaped tensors name the file), for load and inspect |
//! | `embedded.rs` | where the default model ships: a folder on disk, else compiled in |
//! | `model_files.rs` | a folder's files read from disk, or from memory for `<embedded>/...` |
//! | `lora.rs` | LoRA files (kohya / PEFT) checked against a model ([`lora::check_lora`]) |
//! | `lora_names.rs` | LoRA key → model weight name (kohya, PEFT, SDXL SGM names, PEFT alphas) |
//! | `lora_merge.rs` | `W += scale·alpha/rank·up@down` while the model loads; identity with LoRAs |
//! | `hub.rs` | `owner/name` ids fetched with the `hf-hub` feature |

pub mod embedded;
pub mod folder;
pub mod hub;
pub mod lora;
pub(crate) mod lora_merge;
pub mod lora_names;
pub mod model_files;
pub(crate) mod model_loading_utils;
pub(crate) mod weights;
