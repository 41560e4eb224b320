//! TODO(#2): policy
