//! TODO(#2): tls
