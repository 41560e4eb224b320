//! Stage: POP3 line and command parsing, for both machines.
//!
//! Input: the bytes a machine has buffered. Output: where the next line ends, and the borrowed,
//! typed command (downstream) or status line (upstream) it holds. Pure functions: no state, no
//! allocation, no I/O. Nothing here interprets credentials beyond cutting them out of the line;
//! decoding is `crate::proto::sasl`'s job.
//!
//! Hand-written rather than nom: every rule is one split on a space, and a plain function reads
//! closer to the RFC text it quotes.

/// Where the next line in a buffer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `buf[..content]` is the line without its terminator; `consumed` bytes (terminator
    /// included) are to be removed from the buffer.
    Line { content: usize, consumed: usize },
    /// No terminator yet and the line is still within the limit: wait for more bytes.
    Incomplete,
    /// The line is (or will be, once it ends) longer than `max_line` octets, CRLF included.
    TooLong,
}

/// Cut the next line.
///
/// RFC 1939 3: "All commands are terminated by a CRLF pair." A bare LF is accepted as well, as
/// Dovecot and most servers do; a trailing CR before it is not part of the line. `max_line`
/// counts the terminator, so the result does not depend on how the bytes were chunked: a buffer
/// of `max_line` octets without LF can only end in a longer line.
pub fn split_line(buf: &[u8], max_line: usize) -> Split {
    match buf.iter().position(|b| *b == b'\n') {
        Some(lf) if lf < max_line => {
            let content = if lf > 0 && buf[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            Split::Line {
                content,
                consumed: lf + 1,
            }
        }
        Some(_) => Split::TooLong,
        None if buf.len() >= max_line => Split::TooLong,
        None => Split::Incomplete,
    }
}

/// A downstream command before login. Borrowed from the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// RFC 2449 5: `CAPA`.
    Capa,
    /// RFC 1939 7: `USER name`. The whole rest of the line after the single SP, as Dovecot
    /// reads it; empty when no argument was given.
    User(&'a [u8]),
    /// RFC 1939 7: `PASS string`. "Since the PASS command has exactly one argument, a POP3
    /// server may treat spaces in the argument as part of the password": the whole rest of the
    /// line, spaces kept; empty when no argument was given.
    Pass(&'a [u8]),
    /// RFC 5034 4: `AUTH [mechanism [initial-response]]`. `None` is bare `AUTH`, which lists
    /// the mechanisms (RFC 1734 behaviour, kept by Dovecot).
    Auth(Option<Auth<'a>>),
    /// RFC 2595 4: `STLS`.
    Stls,
    /// RFC 1939 5 (TRANSACTION state only there; answered before login too, as docs/wire.md lists).
    Noop,
    /// RFC 1939 6: `QUIT`.
    Quit,
    /// A command RFC 1939 defines for the TRANSACTION state (or APOP, which mailgate does not
    /// offer): valid POP3, not allowed before login.
    NotBeforeLogin,
    /// Known keyword, malformed arguments. The text is safe to send (no input bytes).
    Invalid(&'static str),
    /// Anything else, the empty line included.
    Unknown,
}

/// The arguments of `AUTH mechanism [initial-response]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auth<'a> {
    /// The mechanism name as sent; `crate::proto::sasl::parse_mechanism` maps it.
    pub mechanism: &'a [u8],
    pub initial_response: Option<InitialResponse<'a>>,
}

/// RFC 5034 4: `initial-response = base64 / "="`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialResponse<'a> {
    /// `=`: a zero-length initial response.
    Empty,
    /// Base64 text, not decoded yet.
    Base64(&'a [u8]),
}

/// Parse one command line (terminator already removed).
///
/// RFC 1939 3: "Commands in the POP3 consist of a case-insensitive keyword, possibly followed
/// by one or more arguments. [...] Keywords and arguments are each separated by a single SPACE
/// character." RFC 2449 4 limits a command to 255 octets; mailgate does not, because RFC 5034
/// initial responses of OAuth tokens are far longer in practice; `PreauthLimits::max_line`
/// bounds the line instead.
pub fn command(line: &[u8]) -> Command<'_> {
    // HTAB as well: RFC 5034's ABNF allows it after AUTH, and nothing else reads it otherwise.
    let (keyword, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(sp) => (&line[..sp], Some(&line[sp + 1..])),
        None => (line, None),
    };
    let is = |name: &[u8]| keyword.eq_ignore_ascii_case(name);
    if is(b"CAPA") {
        Command::Capa
    } else if is(b"USER") {
        Command::User(args.unwrap_or_default())
    } else if is(b"PASS") {
        Command::Pass(args.unwrap_or_default())
    } else if is(b"AUTH") {
        auth(args.unwrap_or_default())
    } else if is(b"STLS") {
        Command::Stls
    } else if is(b"NOOP") {
        Command::Noop
    } else if is(b"QUIT") {
        Command::Quit
    } else if [
        &b"STAT"[..],
        b"LIST",
        b"RETR",
        b"DELE",
        b"RSET",
        b"TOP",
        b"UIDL",
        b"LAST",
        b"APOP",
    ]
    .iter()
    .any(|k| is(k))
    {
        Command::NotBeforeLogin
    } else {
        Command::Unknown
    }
}

/// RFC 5034 4:
///
/// ```text
/// auth-command     = "AUTH" 1*(SP / HTAB) sasl-mech
///                    [1*(SP / HTAB) initial-response]
///                    *(CRLF [base64]) [CRLF cancel-response] CRLF
/// initial-response = base64 / "="
/// ```
///
/// Separators are read leniently (runs of SP / HTAB) as that ABNF allows; `sasl-mech` is
/// RFC 4422 `1*20(UPPER-ALPHA / DIGIT / "-" / "_")`, compared case-insensitively.
fn auth(args: &[u8]) -> Command<'_> {
    let mut words = args
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty());
    let Some(mechanism) = words.next() else {
        return Command::Auth(None);
    };
    let initial_response = match words.next() {
        None => None,
        Some(b"=") => Some(InitialResponse::Empty),
        Some(ir) => Some(InitialResponse::Base64(ir)),
    };
    if words.next().is_some() {
        return Command::Invalid("Too many arguments to AUTH.");
    }
    let valid_name = mechanism.len() <= 20
        && mechanism
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !valid_name {
        return Command::Invalid("Invalid mechanism name.");
    }
    Command::Auth(Some(Auth {
        mechanism,
        initial_response,
    }))
}

/// A downstream line inside an AUTH exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslResponse<'a> {
    /// RFC 5034 4: `cancel-response = "*"`.
    Cancel,
    /// Base64 text (possibly empty), not decoded yet.
    Data(&'a [u8]),
}

/// RFC 5034 4: each continuation is `[base64] CRLF` or `"*" CRLF`. Surrounding blanks are
/// dropped: no base64 character is a blank, and some clients add one.
pub fn sasl_response(line: &[u8]) -> SaslResponse<'_> {
    match line.trim_ascii() {
        b"*" => SaslResponse::Cancel,
        data => SaslResponse::Data(data),
    }
}

/// An upstream status line (RFC 1939 3, RFC 5034 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<'a> {
    /// `"+OK" [SP text]`.
    Ok,
    /// `"-ERR" [SP text]`: the text, response code included.
    Err(&'a [u8]),
    /// `continue-req = "+" SP [base64] CRLF`; the SP is optional here, as some servers drop
    /// it. The base64 text, trimmed.
    Continue(&'a [u8]),
    /// Anything else.
    Other,
}

/// Classify one upstream line (terminator removed). RFC 1939 3: "status indicators [...] are
/// in upper case"; `+OK` is matched before `+` so `+OK` is never a continuation.
pub fn status(line: &[u8]) -> Status<'_> {
    if let Some(rest) = line.strip_prefix(b"+OK") {
        if rest.is_empty() || rest.starts_with(b" ") {
            return Status::Ok;
        }
        return Status::Other;
    }
    if let Some(rest) = line.strip_prefix(b"-ERR") {
        if rest.is_empty() || rest.starts_with(b" ") {
            return Status::Err(rest.trim_ascii());
        }
        return Status::Other;
    }
    match line.strip_prefix(b"+") {
        Some(rest) => Status::Continue(rest.trim_ascii()),
        None => Status::Other,
    }
}

/// RFC 2449 8: `resp-code = "[" resp-level *("/" resp-level) "]"`. The text of a `-ERR` line
/// without its leading response code, if any.
pub fn strip_resp_code(text: &[u8]) -> &[u8] {
    if text.starts_with(b"[")
        && let Some(end) = text.iter().position(|b| *b == b']')
    {
        return text[end + 1..].trim_ascii_start();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split case, re-run with the buffer grown one byte at a time: a line must come out
    /// the same however the bytes arrived.
    #[test]
    fn split_table() {
        let cases: &[(&[u8], usize, Split)] = &[
            (
                b"CAPA\r\n",
                16,
                Split::Line {
                    content: 4,
                    consumed: 6,
                },
            ),
            (
                b"CAPA\n",
                16,
                Split::Line {
                    content: 4,
                    consumed: 5,
                },
            ),
            (
                b"\r\n",
                16,
                Split::Line {
                    content: 0,
                    consumed: 2,
                },
            ),
            (
                b"\n",
                16,
                Split::Line {
                    content: 0,
                    consumed: 1,
                },
            ),
            (b"CAPA", 16, Split::Incomplete),
            (b"CAPA\r", 16, Split::Incomplete),
            (
                b"NOOP\r\nQUIT\r\n",
                16,
                Split::Line {
                    content: 4,
                    consumed: 6,
                },
            ),
            (
                b"12345678\r\n",
                10,
                Split::Line {
                    content: 8,
                    consumed: 10,
                },
            ),
            (b"123456789\r\n", 10, Split::TooLong),
            (b"1234567890", 10, Split::TooLong),
        ];
        for (buf, max, want) in cases {
            assert_eq!(split_line(buf, *max), *want, "{buf:?}");
            // Prefixes: never a different line, never TooLong early unless the whole is.
            for n in 0..buf.len() {
                let got = split_line(&buf[..n], *max);
                match want {
                    Split::TooLong => {
                        assert!(matches!(got, Split::Incomplete | Split::TooLong), "{n}")
                    }
                    _ => assert!(got == Split::Incomplete || got == *want, "{buf:?} {n}"),
                }
            }
        }
    }

    #[test]
    fn command_table() {
        let cases: &[(&[u8], Command)] = &[
            (b"CAPA", Command::Capa),
            (b"capa", Command::Capa),
            (b"CAPA extra", Command::Capa),
            (b"USER alice", Command::User(b"alice")),
            (
                b"user alice@example.com",
                Command::User(b"alice@example.com"),
            ),
            (b"USER", Command::User(b"")),
            (b"PASS s3cret", Command::Pass(b"s3cret")),
            (b"PASS  two words ", Command::Pass(b" two words ")),
            (b"PASS", Command::Pass(b"")),
            (b"AUTH", Command::Auth(None)),
            (b"AUTH ", Command::Auth(None)),
            (
                b"AUTH PLAIN",
                Command::Auth(Some(Auth {
                    mechanism: b"PLAIN",
                    initial_response: None,
                })),
            ),
            (
                b"auth xoauth2 dXNlcj0=",
                Command::Auth(Some(Auth {
                    mechanism: b"xoauth2",
                    initial_response: Some(InitialResponse::Base64(b"dXNlcj0=")),
                })),
            ),
            (
                b"AUTH\tPLAIN  =",
                Command::Auth(Some(Auth {
                    mechanism: b"PLAIN",
                    initial_response: Some(InitialResponse::Empty),
                })),
            ),
            (
                b"AUTH PLAIN a b",
                Command::Invalid("Too many arguments to AUTH."),
            ),
            (b"AUTH PL@IN", Command::Invalid("Invalid mechanism name.")),
            (b"STLS", Command::Stls),
            (b"NOOP", Command::Noop),
            (b"QUIT", Command::Quit),
            (b"STAT", Command::NotBeforeLogin),
            (b"retr 1", Command::NotBeforeLogin),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22fb",
                Command::NotBeforeLogin,
            ),
            (b"", Command::Unknown),
            (b" CAPA", Command::Unknown),
            (b"CAPABILITY", Command::Unknown),
            (b"\xff\x00", Command::Unknown),
        ];
        for (line, want) in cases {
            assert_eq!(command(line), *want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn sasl_response_table() {
        assert_eq!(sasl_response(b"*"), SaslResponse::Cancel);
        assert_eq!(sasl_response(b" * "), SaslResponse::Cancel);
        assert_eq!(sasl_response(b""), SaslResponse::Data(b""));
        assert_eq!(sasl_response(b"AQ=="), SaslResponse::Data(b"AQ=="));
        assert_eq!(sasl_response(b"**"), SaslResponse::Data(b"**"));
    }

    #[test]
    fn status_table() {
        let cases: &[(&[u8], Status)] = &[
            (b"+OK", Status::Ok),
            (b"+OK Dovecot ready.", Status::Ok),
            (b"+OKAY", Status::Other),
            (b"-ERR", Status::Err(b"")),
            (
                b"-ERR [AUTH] Authentication failed.",
                Status::Err(b"[AUTH] Authentication failed."),
            ),
            (b"-ERRor", Status::Other),
            (b"+", Status::Continue(b"")),
            (b"+ ", Status::Continue(b"")),
            (
                b"+ eyJzdGF0dXMiOiI0MDAifQ==",
                Status::Continue(b"eyJzdGF0dXMiOiI0MDAifQ=="),
            ),
            (b"+VXNlcm5hbWU6", Status::Continue(b"VXNlcm5hbWU6")),
            (b"* OK IMAP", Status::Other),
            (b"", Status::Other),
            (b"+ok", Status::Continue(b"ok")),
        ];
        for (line, want) in cases {
            assert_eq!(status(line), *want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn resp_code_stripped() {
        assert_eq!(
            strip_resp_code(b"[AUTH] Authentication failed."),
            b"Authentication failed."
        );
        assert_eq!(strip_resp_code(b"[SYS/TEMP] Try later"), b"Try later");
        assert_eq!(strip_resp_code(b"Plain text"), b"Plain text");
        assert_eq!(strip_resp_code(b"[unterminated"), b"[unterminated");
    }
}
