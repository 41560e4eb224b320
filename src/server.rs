//! TODO(#2): server
