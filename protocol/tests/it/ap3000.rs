//! ap3000 integration tests (vectors, streaming, properties).
