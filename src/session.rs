//! TODO(#2): session
