//! `Pop3Frontend` driven as `session.rs` drives it; invariants in `mailgate_fuzz::run_frontend`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate::proto::pop3::frontend::Pop3Frontend;

fuzz_target!(|data: &[u8]| mailgate_fuzz::run_frontend::<Pop3Frontend>(data));
