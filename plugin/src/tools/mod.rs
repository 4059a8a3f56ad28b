//! Editor-time tooling on the same core: [`bake`] (`texgen bake`: manifests of named requests
//! baked to PNGs + sidecars, only what changed) and [`inspect`] (`texgen inspect`: every problem
//! of a model folder).

pub mod bake;
pub mod inspect;
