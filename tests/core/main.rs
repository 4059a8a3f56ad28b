//! Integration tests of the bevy-free core against HF diffusers' reference tensors.

mod bake;
mod embedded_model;
mod kernels;
mod loading;
mod models;
mod pipeline;
mod schedulers;
mod vae;
