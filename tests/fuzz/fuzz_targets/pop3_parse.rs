//! The POP3 line splitter and the command, SASL-response and status parsers on arbitrary bytes.
//!
//! Checks: nothing panics; `split_line` results are in bounds and do not depend on chunking;
//! parsed pieces borrow from their line.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use mailgate::proto::pop3::parse::{self, Command, InitialResponse, SaslResponse, Split, Status};
use mailgate_fuzz::{chunk_len, split_input};

#[derive(Debug, PartialEq, Eq)]
enum Out {
    Line(Vec<u8>),
    TooLong,
}

fuzz_target!(|data: &[u8]| {
    let (ctrl, stream) = split_input(data);
    let mut u = Unstructured::new(ctrl);
    // 0 is no limit anyone sets (config: at least 512); at 0 even an empty buffer is too long.
    let max_line = usize::from(u.arbitrary::<u16>().unwrap_or(512)).max(1);

    let whole = lines([stream].into_iter(), max_line);
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_len(&mut u, rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    assert_eq!(
        whole,
        lines(chunks.into_iter(), max_line),
        "lines depend on chunking"
    );
    check_line(stream);
});

fn lines<'a>(chunks: impl Iterator<Item = &'a [u8]>, max_line: usize) -> Vec<Out> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parse::split_line(&buf, max_line) {
                Split::Incomplete => {
                    assert!(buf.len() < max_line && !buf.contains(&b'\n'));
                    break;
                }
                Split::TooLong => {
                    out.push(Out::TooLong);
                    return out;
                }
                Split::Line { content, consumed } => {
                    assert!(consumed <= buf.len() && consumed <= max_line);
                    assert_eq!(buf[consumed - 1], b'\n');
                    assert!(content == consumed - 1 || content == consumed - 2);
                    let line: Vec<u8> = buf.drain(..consumed).take(content).collect();
                    check_line(&line);
                    out.push(Out::Line(line));
                }
            }
        }
    }
    out
}

fn check_line(line: &[u8]) {
    let within = |part: &[u8]| {
        let (start, end) = (line.as_ptr() as usize, line.as_ptr() as usize + line.len());
        let p = part.as_ptr() as usize;
        part.is_empty() || (p >= start && p + part.len() <= end)
    };
    match parse::command(line) {
        Command::User(arg) | Command::Pass(arg) => assert!(within(arg)),
        Command::Auth(Some(auth)) => {
            assert!(!auth.mechanism.is_empty() && auth.mechanism.len() <= 20);
            assert!(within(auth.mechanism));
            if let Some(InitialResponse::Base64(ir)) = auth.initial_response {
                assert!(within(ir) && !ir.is_empty());
            }
        }
        _ => {}
    }
    if let SaslResponse::Data(data) = parse::sasl_response(line) {
        assert!(within(data));
    }
    match parse::status(line) {
        Status::Err(text) | Status::Continue(text) => {
            assert!(within(text));
            let stripped = parse::strip_resp_code(text);
            assert!(text.ends_with(stripped));
        }
        Status::Ok | Status::Other => {}
    }
}
