//! Stage: IMAP protocol machines. SANS-IO: bytes in, events and bytes out.
//!
//! - [`parse`]: the line/literal framer and the nom parser for pre-auth commands.
//! - [`frontend`]: [`ImapFrontend`], the pre-auth state machine toward the mail client
//!   (downstream): greeting, CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE, limits.
//! - [`replay`]: [`ImapReplay`], which replays the accepted login to the real server (upstream)
//!   with the same mechanism and reports its answer.
//!
//! Neither machine touches a socket or the clock; the driver in `session.rs` moves the bytes,
//! passes time in and acts on the events. Credentials only leave as transmit bytes, never in
//! `Debug` output, errors or panics.

pub mod frontend;
pub mod parse;
pub mod replay;

pub use frontend::ImapFrontend;
pub use replay::ImapReplay;
