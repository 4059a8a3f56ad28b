//! STUB: tensor -> RGBA8.
