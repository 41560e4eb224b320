//! Mail fixtures: the messages each harness user's INBOX starts with.
//!
//! Every message uses CRLF line endings and has no NUL, bare CR or bare LF, so the bytes an
//! IMAP `FETCH BODY[]` or a (dot-unstuffed) POP3 `RETR` returns are exactly the bytes
//! written here; tests compare sizes and SHA-256 digests. The set covers what a splicing
//! proxy must carry unchanged: plain text, lines that POP3 must dot-stuff, 8-bit bytes
//! 0x80..=0xFF and C0 controls, a MIME attachment, and one large (~5 MiB) message.

use std::sync::OnceLock;

/// Size of the large message's body, a bit over 5 MiB.
pub const LARGE_BODY: usize = 5 * 1024 * 1024 + 123;

/// The initial INBOX of `user`, in the order Dovecot numbers them (1, 2, ...).
pub fn inbox(user: &str) -> Vec<Vec<u8>> {
    vec![
        plain(user),
        dot_lines(user),
        eight_bit(user),
        multipart(user),
        large(user),
    ]
}

/// A small message for delivery while a session is open (the IDLE tests).
pub fn delivered(user: &str, n: u32) -> Vec<u8> {
    message(
        user,
        &format!("Delivered {n}"),
        "text/plain; charset=us-ascii",
        None,
        format!("Message {n} delivered during the session.\r\n").as_bytes(),
    )
}

fn headers(user: &str, subject: &str, content_type: &str, cte: Option<&str>) -> String {
    let mut h = format!(
        "Return-Path: <sender@example.net>\r\n\
         From: Sender <sender@example.net>\r\n\
         To: <{user}>\r\n\
         Subject: {subject}\r\n\
         Date: Mon, 24 Nov 2025 10:00:00 +0000\r\n\
         Message-ID: <{}.{}@mailgate.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: {content_type}\r\n",
        subject.replace(' ', "-").to_lowercase(),
        user.replace('@', "."),
    );
    if let Some(cte) = cte {
        h.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n"));
    }
    h.push_str("\r\n");
    h
}

fn message(user: &str, subject: &str, ct: &str, cte: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut m = headers(user, subject, ct, cte).into_bytes();
    m.extend_from_slice(body);
    m
}

fn plain(user: &str) -> Vec<u8> {
    let body =
        format!("Hello {user},\r\n\r\nthis is the first message.\r\n-- \r\nmailgate tests\r\n");
    message(
        user,
        "Plain hello",
        "text/plain; charset=us-ascii",
        None,
        body.as_bytes(),
    )
}

/// Lines POP3 must dot-stuff (RFC 1939 section 3), including a lone "." that would end the
/// response early if a proxy unstuffed or re-stuffed it wrongly.
fn dot_lines(user: &str) -> Vec<u8> {
    let body = "Dots ahead.\r\n.\r\n..\r\n.leading dot\r\n...three\r\n. \r\nend\r\n";
    message(
        user,
        "Dot lines",
        "text/plain; charset=us-ascii",
        None,
        body.as_bytes(),
    )
}

/// UTF-8 text, every byte 0x80..=0xFF, and the C0 controls other than NUL, CR and LF.
fn eight_bit(user: &str) -> Vec<u8> {
    let mut body = "Grüße aus Köln — ✉ ünïcödé\r\n".as_bytes().to_vec();
    for row in (0x80u8..=0xFF).collect::<Vec<_>>().chunks(32) {
        body.extend_from_slice(row);
        body.extend_from_slice(b"\r\n");
    }
    let controls: Vec<u8> = (0x01u8..0x20)
        .filter(|b| *b != b'\r' && *b != b'\n')
        .chain([0x7F])
        .collect();
    body.extend_from_slice(&controls);
    body.extend_from_slice(b"\r\nend of 8-bit part\r\n");
    message(
        user,
        "Eight bit",
        "text/plain; charset=utf-8",
        Some("8bit"),
        &body,
    )
}

fn multipart(user: &str) -> Vec<u8> {
    let attachment = base64_lines(&pseudo_random(0x5eed, 3000));
    let body = format!(
        "This is a multi-part message in MIME format.\r\n\
         --b0undary\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         See the attachment.\r\n\
         --b0undary\r\n\
         Content-Type: application/octet-stream; name=\"blob.bin\"\r\n\
         Content-Disposition: attachment; filename=\"blob.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n\
         {attachment}\
         --b0undary--\r\n"
    );
    message(
        user,
        "With attachment",
        "multipart/mixed; boundary=\"b0undary\"",
        None,
        body.as_bytes(),
    )
}

fn large(user: &str) -> Vec<u8> {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    let body = BODY.get_or_init(|| {
        // Base64 of pseudo-random bytes, 76 columns, cut to exactly LARGE_BODY bytes on a
        // line boundary plus a short last line.
        let text = base64_lines(&pseudo_random(0xb16, LARGE_BODY / 4 * 3));
        let mut b = text.into_bytes();
        b.truncate(LARGE_BODY - 2);
        while b.last() == Some(&b'\r') || b.last() == Some(&b'\n') {
            b.pop();
        }
        b.extend_from_slice(b"\r\n");
        b
    });
    message(
        user,
        "Large attachment",
        "application/octet-stream",
        Some("base64"),
        body,
    )
}

/// Deterministic bytes (xorshift64), so digests are stable across runs.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push_str("\r\n");
    }
    out
}
