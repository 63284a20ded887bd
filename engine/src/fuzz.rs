//! Fuzz harness bodies (see tools/fuzz). Filled in by the fuzzing work.
