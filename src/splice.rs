//! TODO(#2): splice
