//! bkv integration tests (vectors, streaming, properties).
