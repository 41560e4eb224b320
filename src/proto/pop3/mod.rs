//! pop3 machines: pre-auth front-end (downstream) and login replay (upstream).
pub mod frontend;
pub mod parse;
pub mod replay;
