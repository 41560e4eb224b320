//! TODO(#2)
