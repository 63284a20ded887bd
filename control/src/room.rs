//! TODO (issue 3)
