//! Integration tests of the bevy-free core against HF diffusers' reference tensors.

mod models;
mod schedulers;
mod loading;
mod pipeline;
mod vae;
