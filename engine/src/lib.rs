//! ils engine library
