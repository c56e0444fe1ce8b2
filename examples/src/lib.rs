//! No library: this package holds the examples of `token-refresh` (see `examples/`).
