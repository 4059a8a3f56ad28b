//! Integration tests of the bevy-free core against HF diffusers' reference tensors.

mod bake;
mod bake_art;
mod bf16;
mod break_it;
mod break_it5;
mod cargo_features;
mod embedded_model;
mod inpaint;
mod int8_weights;
mod kernels;
mod loading;
mod lora;
mod models;
mod non_finite;
mod pbr;
mod pipeline;
mod schedulers;
mod sdxl;
mod sdxl_lora;
mod sdxs;
mod taesd;
mod upscale;
mod upscale_request;
mod vae;
mod worker;
