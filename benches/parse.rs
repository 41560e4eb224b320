//! Pre-auth parsing cost (divan): `cargo bench --bench parse`.
//!
//! What one connection costs mailgate before the upstream is even contacted, in ns per
//! operation on one core:
//! - `imap_frame_and_parse`: framing plus `parse::command` of typical pre-auth commands (LOGIN,
//!   AUTHENTICATE PLAIN with SASL-IR, CAPABILITY, ID);
//! - `imap_frontend_login` / `imap_frontend_authenticate_plain`: a whole `ImapFrontend` exchange
//!   (greeting, command in, `LoginRequested` out, outcome in, tagged OK out, residual);
//! - `pop3_frontend_user_pass`: the same for POP3 USER/PASS;
//! - `sasl_*`: base64 decoding plus SASL parsing of PLAIN and of XOAUTH2 carrying a 2 KB token;
//! - `proxy_v2_*`: PROXY protocol v2 header parse (IPv4 and IPv6, with a TLV).
//!
//! No I/O: the machines are sans-IO, so this is exactly their CPU cost.

// A measuring tool, not the proxy: a broken fixture should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mailgate::proto::imap::ImapFrontend;
use mailgate::proto::imap::parse::{self, Frame, FrameLimits, Framer, LiteralMode};
use mailgate::proto::pop3::frontend::Pop3Frontend;
use mailgate::proto::{
    FrontendEvent, LoginOutcome, Mechanism, PreauthLimits, Security, proxy_header, sasl,
};

fn main() {
    divan::main();
}

/// A 2 KB bearer token, the size of a typical Entra ID / Google JWT access token.
fn token() -> String {
    let mut t = String::from("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.");
    while t.len() < 2048 {
        t.push_str("eyJzdWIiOiJhbGljZUBleGFtcGxlLmNvbSJ9");
    }
    t.truncate(2048);
    t
}

fn xoauth2_b64() -> String {
    let raw = format!("user=alice@example.com\x01auth=Bearer {}\x01\x01", token());
    sasl::encode_base64(raw.as_bytes())
}

fn plain_b64() -> String {
    sasl::encode_base64(b"\0alice@example.com\0alice-secret")
}

const LIMITS: FrameLimits = FrameLimits {
    max_line: 16 * 1024,
    max_literal: 8 * 1024,
    max_message: 64 * 1024,
    literals: LiteralMode::Client,
};

#[divan::bench(args = ["login", "authenticate_plain", "authenticate_xoauth2", "capability", "id"])]
fn imap_frame_and_parse(bencher: divan::Bencher, kind: &str) {
    let line = match kind {
        "login" => "a1 LOGIN \"alice@example.com\" \"alice-secret\"\r\n".to_owned(),
        "authenticate_plain" => format!("a1 AUTHENTICATE PLAIN {}\r\n", plain_b64()),
        "authenticate_xoauth2" => format!("a1 AUTHENTICATE XOAUTH2 {}\r\n", xoauth2_b64()),
        "capability" => "a0 CAPABILITY\r\n".to_owned(),
        _ => {
            "a0 ID (\"name\" \"Thunderbird\" \"version\" \"128.0\" \"os\" \"Linux\")\r\n".to_owned()
        }
    };
    let buf = line.into_bytes();
    bencher.bench(|| {
        let mut framer = Framer::default();
        let Frame::Complete { len } = framer.next(black_box(&buf), &LIMITS) else {
            panic!("incomplete");
        };
        let Ok(cmd) = parse::command(&buf[..len]) else {
            panic!("does not parse");
        };
        black_box(cmd);
    });
}

/// Greeting, `command`, login requested, accepted, tagged OK, residual: one whole pre-auth
/// exchange of the IMAP front-end.
fn imap_exchange(command: &[u8]) -> usize {
    let mut fe = ImapFrontend::new(Security::Tls, PreauthLimits::default(), Instant::now());
    let mut out = 0;
    while let Some(b) = fe.poll_transmit() {
        out += b.len();
    }
    fe.handle_input(command);
    let Some(FrontendEvent::LoginRequested(req)) = fe.poll_event() else {
        panic!("no login requested");
    };
    black_box(&req);
    fe.handle_outcome(LoginOutcome::Accepted {
        untagged: Bytes::new(),
        reply: Bytes::from_static(b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
    });
    while let Some(b) = fe.poll_transmit() {
        out += b.len();
    }
    out + fe.into_residual().len()
}

#[divan::bench]
fn imap_frontend_login(bencher: divan::Bencher) {
    let cmd = b"a1 LOGIN \"alice@example.com\" \"alice-secret\"\r\n";
    bencher.bench(|| imap_exchange(black_box(cmd)));
}

#[divan::bench]
fn imap_frontend_authenticate_plain(bencher: divan::Bencher) {
    let cmd = format!("a1 AUTHENTICATE PLAIN {}\r\n", plain_b64()).into_bytes();
    bencher.bench(|| imap_exchange(black_box(&cmd)));
}

#[divan::bench]
fn imap_frontend_authenticate_xoauth2(bencher: divan::Bencher) {
    let cmd = format!("a1 AUTHENTICATE XOAUTH2 {}\r\n", xoauth2_b64()).into_bytes();
    bencher.bench(|| imap_exchange(black_box(&cmd)));
}

#[divan::bench]
fn pop3_frontend_user_pass(bencher: divan::Bencher) {
    bencher.bench(|| {
        let mut fe = Pop3Frontend::new(Security::Tls, PreauthLimits::default(), Instant::now());
        let mut out = 0;
        while let Some(b) = fe.poll_transmit() {
            out += b.len();
        }
        fe.handle_input(black_box(b"USER alice@example.com\r\n"));
        while let Some(b) = fe.poll_transmit() {
            out += b.len();
        }
        fe.handle_input(black_box(b"PASS alice-secret\r\n"));
        let Some(FrontendEvent::LoginRequested(req)) = fe.poll_event() else {
            panic!("no login requested");
        };
        black_box(&req);
        fe.handle_outcome(LoginOutcome::Accepted {
            untagged: Bytes::new(),
            reply: Bytes::from_static(b"+OK Logged in.\r\n"),
        });
        while let Some(b) = fe.poll_transmit() {
            out += b.len();
        }
        out + fe.into_residual().len()
    });
}

#[divan::bench]
fn sasl_plain(bencher: divan::Bencher) {
    let b64 = plain_b64();
    bencher.bench(|| {
        let raw = sasl::decode_base64(black_box(b64.as_bytes())).unwrap();
        sasl::decode(Mechanism::Plain, &raw).unwrap()
    });
}

#[divan::bench]
fn sasl_xoauth2_2kb_token(bencher: divan::Bencher) {
    let b64 = xoauth2_b64();
    bencher.bench(|| {
        let raw = sasl::decode_base64(black_box(b64.as_bytes())).unwrap();
        sasl::decode(Mechanism::XOAuth2, &raw).unwrap()
    });
}

#[divan::bench(args = ["ipv4", "ipv6_tlv"])]
fn proxy_v2(bencher: divan::Bencher, kind: &str) {
    let (src, dst): (SocketAddr, SocketAddr) = if kind == "ipv4" {
        (
            "192.0.2.10:51234".parse().unwrap(),
            "198.51.100.1:993".parse().unwrap(),
        )
    } else {
        (
            "[2001:db8::10]:51234".parse().unwrap(),
            "[2001:db8::1]:993".parse().unwrap(),
        )
    };
    let mut header = proxy_header::encode_v2(src, dst);
    if kind != "ipv4" {
        // A PP2_TYPE_AUTHORITY TLV (SNI), as HAProxy sends with `send-proxy-v2`: the length
        // field (bytes 14..16) grows by the TLV's size.
        let tlv = [&[0x02u8, 0x00, 16][..], b"mail.example.com"].concat();
        let len = u16::from_be_bytes([header[14], header[15]]) + tlv.len() as u16;
        header[14..16].copy_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&tlv);
    }
    header.extend_from_slice(b"a1 CAPABILITY\r\n");
    bencher.bench(|| match proxy_header::parse(black_box(&header)).unwrap() {
        proxy_header::Parsed::Complete { header, consumed } => (header, consumed),
        proxy_header::Parsed::Incomplete => panic!("incomplete"),
    });
}
