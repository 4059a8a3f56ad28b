//! STUB (owned by the loader helper): the diffusers folder layout (model_index.json, component files).
