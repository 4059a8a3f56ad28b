//! The networks of a Stable Diffusion pipeline, written on candle-nn and mirroring diffusers'
//! (and transformers') module trees, so that `vb.pp(...)` walks the checkpoint's tensor names.
//!
//! | file | mirrors |
//! |---|---|
//! | `clip_text_model.rs` | transformers `models/clip/modeling_clip.py` (`CLIPTextModel`) |
//! | `unet_2d_condition.rs` | diffusers `models/unets/unet_2d_condition.py` |
//! | `unet_2d_blocks.rs` | diffusers `models/unets/unet_2d_blocks.py` |
//! | `transformer_2d.rs` | diffusers `models/transformers/transformer_2d.py` + `attention.py` |
//! | `embeddings.rs` | diffusers `models/embeddings.py` (timestep embedding) |
//! | `tokenizer.rs` | transformers `models/clip/tokenization_clip.py` (`CLIPTokenizer`, via the `tokenizers` crate) |
//! | `resnet.rs` | diffusers `models/resnet.py` (`ResnetBlock2D`, `Downsample2D`, `Upsample2D`) |
//! | `autoencoder_kl.rs` | diffusers `models/autoencoders/autoencoder_kl.py` + `vae.py` |
//! | `vae.rs` | diffusers `models/autoencoders/vae.py` (`Encoder`, `Decoder`) and the VAE's blocks |

pub mod autoencoder_kl;
pub mod clip_text_model;
pub mod embeddings;
pub mod resnet;
pub mod tokenizer;
pub mod transformer_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod vae;
