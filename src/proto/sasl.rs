//! TODO(#2): sasl
