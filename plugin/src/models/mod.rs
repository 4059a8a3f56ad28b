//! The networks of a Stable Diffusion pipeline, written on candle-nn and mirroring diffusers'
//! (and transformers') module trees, so that `vb.pp(...)` walks the checkpoint's tensor names.
//!
//! | file | mirrors |
//! |---|---|
//! | `clip_text_model.rs` | transformers `models/clip/modeling_clip.py` (`CLIPTextModel`) |
//! | `clip_text_model_with_projection.rs` | same file, `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`) |
//! | `unet_2d_condition.rs` | diffusers `models/unets/unet_2d_condition.py` |
//! | `unet_2d_blocks.rs` | diffusers `models/unets/unet_2d_blocks.py` |
//! | `transformer_2d.rs` | diffusers `models/transformers/transformer_2d.py` + `attention.py` |
//! | `embeddings.rs` | diffusers `models/embeddings.py` (timestep embedding) |
//! | `tokenizer.rs` | transformers `models/clip/tokenization_clip.py` (`CLIPTokenizer`, via the `tokenizers` crate) |
//! | `resnet.rs` | diffusers `models/resnet.py` (`ResnetBlock2D`, `Downsample2D`, `Upsample2D`) |
//! | `autoencoder_kl.rs` | diffusers `models/autoencoders/autoencoder_kl.py` + `vae.py` |
//! | `autoencoder_tiny.rs` | diffusers `models/autoencoders/autoencoder_tiny.py` (`AutoencoderTiny`, TAESD) |
//! | `autoencoders.rs` | the pipeline's `vae`: `AutoencoderKL` or `AutoencoderTiny` by `_class_name` |
//! | `vae_tiny.rs` | diffusers `vae.py` (`EncoderTiny`, `DecoderTiny`) + `AutoencoderTinyBlock` |
//! | `vae.rs` | diffusers `models/autoencoders/vae.py` (`Encoder`, `Decoder`) and the VAE's blocks |

pub mod autoencoder_kl;
pub mod autoencoder_tiny;
pub mod autoencoders;
pub mod clip_text_model;
pub mod clip_text_model_with_projection;
pub mod embeddings;
pub mod resnet;
pub mod tokenizer;
pub mod transformer_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod vae;
pub mod vae_tiny;
