//! `ImapReplay` fed arbitrary upstream bytes for one of the fixed logins; invariants in
//! `mailgate_fuzz::run_replay`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate::proto::imap::ImapReplay;

fuzz_target!(|data: &[u8]| mailgate_fuzz::run_replay::<ImapReplay>(data));
