//! TODO(#2): upstream
