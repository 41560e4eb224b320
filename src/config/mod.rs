//! TODO(#2): config
