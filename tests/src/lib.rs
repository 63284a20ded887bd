//! shared helpers for cross-process tests
