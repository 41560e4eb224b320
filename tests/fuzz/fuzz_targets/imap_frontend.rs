//! `ImapFrontend` driven as `session.rs` drives it; invariants in `mailgate_fuzz::run_frontend`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate::proto::imap::ImapFrontend;

fuzz_target!(|data: &[u8]| mailgate_fuzz::run_frontend::<ImapFrontend>(data));
