//! Stage: POP3 protocol machines. SANS-IO: bytes in, events and bytes out.
//!
//! - [`frontend::Pop3Frontend`]: the pre-auth machine facing the mail client (downstream):
//!   greeting, CAPA, STLS, USER/PASS, AUTH (RFC 1939, 2449, 2595, 3206, 5034). It reports a
//!   complete login as `FrontendEvent::LoginRequested` and answers with the driver's verdict.
//! - [`replay::Pop3Replay`]: replays that login to the real server (upstream) with the same
//!   mechanism and reports how the upstream answered.
//! - [`parse`]: line splitting and the command / status-line grammar both use.
//!
//! Neither machine does I/O, reads the clock or decides policy; the driver in `session.rs` does.

pub mod frontend;
pub mod parse;
pub mod replay;

#[cfg(test)]
mod testing;
