//! STUB (owned by the models helper).
