//! STUB (owned by the schedulers helper).
