//! STUB (owned by the loader helper): safetensors-only weight loading with typed errors.
