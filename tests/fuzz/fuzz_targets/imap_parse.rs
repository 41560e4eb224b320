//! The IMAP framer and pre-auth parser on arbitrary bytes.
//!
//! Checks: nothing panics; every frame result is in bounds; framing does not depend on how the
//! bytes were chunked (the whole stream and fuzzer-chosen chunks give the same messages);
//! `command` agrees with `command_head`/`tag_prefix`; `Debug` of a parsed command never shows a
//! LOGIN password.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mailgate::proto::imap::parse::{
    self, CommandBody, Frame, FrameLimits, Framer, LiteralMode, SaslResponse,
};
use mailgate_fuzz::{chunk_len, split_input};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Mode {
    Client,
    Server,
    None,
}

#[derive(Debug, PartialEq, Eq)]
enum Out {
    Message(Vec<u8>),
    Announced { len: usize, accepted: bool },
    TooLarge { sync: bool },
    TooLong,
}

fuzz_target!(|data: &[u8]| {
    let (ctrl, stream) = split_input(data);
    let mut u = Unstructured::new(ctrl);
    let mode = Mode::arbitrary(&mut u).unwrap_or(Mode::Client);
    let limits = FrameLimits {
        max_line: usize::from(u16::arbitrary(&mut u).unwrap_or(1024)),
        max_literal: usize::from(u16::arbitrary(&mut u).unwrap_or(256)),
        max_message: usize::from(u16::arbitrary(&mut u).unwrap_or(4096)),
        literals: match mode {
            Mode::Client => LiteralMode::Client,
            Mode::Server => LiteralMode::Server,
            Mode::None => LiteralMode::None,
        },
    };

    let whole = frame_all([stream].into_iter(), &limits);
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_len(&mut u, rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    let chunked = frame_all(chunks.into_iter(), &limits);
    assert_eq!(whole, chunked, "framing depends on chunking");

    // The parsers on raw bytes, framed or not.
    check_command(stream);
    let _ = parse::authenticate_response(stream);
    if let Some(tag) = parse::tag_prefix(stream) {
        assert!(stream.starts_with(tag.as_bytes()));
    }
});

/// Frame a stream fed in `chunks`, answering literal announcements by a rule that does not
/// depend on chunking (accept even lengths, refuse odd ones).
fn frame_all<'a>(chunks: impl Iterator<Item = &'a [u8]>, limits: &FrameLimits) -> Vec<Out> {
    let mut buf = Vec::new();
    let mut framer = Framer::default();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match framer.next(&buf, limits) {
                Frame::Incomplete => break,
                Frame::Complete { len } => {
                    assert!(len > 0 && len <= buf.len(), "Complete out of bounds");
                    assert_eq!(buf[len - 1], b'\n', "Complete does not end in LF");
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    framer.reset();
                    if limits.literals == LiteralMode::Client {
                        check_command(&msg);
                    }
                    if limits.literals == LiteralMode::None {
                        let _ = parse::authenticate_response(&msg);
                    }
                    out.push(Out::Message(msg));
                }
                Frame::LiteralAnnounced { data_start, len } => {
                    assert_eq!(
                        limits.literals,
                        LiteralMode::Client,
                        "sync literal from server"
                    );
                    assert!(data_start > 0 && data_start <= buf.len());
                    assert_eq!(buf[data_start - 1], b'\n');
                    assert!(
                        len <= limits.max_literal,
                        "announced literal over the limit"
                    );
                    let accepted = len % 2 == 0;
                    out.push(Out::Announced { len, accepted });
                    if accepted {
                        framer.accept_literal(data_start, len);
                    } else {
                        buf.drain(..data_start);
                        framer.reset();
                    }
                }
                Frame::LiteralTooLarge { data_start, sync } => {
                    assert!(data_start > 0 && data_start <= buf.len());
                    out.push(Out::TooLarge { sync });
                    if !sync {
                        return out;
                    }
                    buf.drain(..data_start);
                    framer.reset();
                }
                Frame::LineTooLong => {
                    out.push(Out::TooLong);
                    return out;
                }
            }
        }
    }
    out
}

fn check_command(msg: &[u8]) {
    match parse::command(msg) {
        Ok(command) => {
            assert!(!command.tag.is_empty());
            assert!(msg.starts_with(command.tag.as_bytes()));
            assert_eq!(msg.get(command.tag.len()), Some(&b' '));
            let (tag, _) = parse::command_head(msg).expect("a command has a head");
            assert_eq!(tag, command.tag);
            let debug = format!("{command:?}");
            if let CommandBody::Login { user, password } = &command.body {
                let public = [command.tag.as_bytes(), user.as_ref()];
                let leaked = mailgate_fuzz::checkable(password)
                    && !public.iter().any(|p| mailgate_fuzz::contains(p, password))
                    && mailgate_fuzz::contains(debug.as_bytes(), password);
                assert!(!leaked, "LOGIN password in Debug: {debug}");
            }
        }
        Err(parse::Malformed { tag: Some(tag) }) => {
            assert!(msg.starts_with(tag.as_bytes()));
        }
        Err(parse::Malformed { tag: None }) => {
            assert!(parse::tag_prefix(msg).is_none());
        }
    }
    if let Some(SaslResponse::Base64(text)) = parse::authenticate_response(msg) {
        assert!(text.len() <= msg.len());
    }
}
