//! Incremental XML stream reader (to be written).
