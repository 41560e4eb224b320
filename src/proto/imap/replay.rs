//! TODO(#2)
pub struct ImapReplay;
