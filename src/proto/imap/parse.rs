//! IMAP pre-auth command parser (downstream side) and the line/literal framer both IMAP machines
//! use.
//!
//! Input: raw bytes from the peer. Output: where a message ends ([`Framer`]) and, for a complete
//! downstream message, a [`Command`] ([`command`]) or an AUTHENTICATE continuation line
//! ([`authenticate_response`]). Nothing here allocates for attacker-sized input beyond what the
//! caller buffered, nothing panics, and no error carries input bytes (they may be credentials).
//!
//! Parsing is split in two steps, as imap-codec's fragmentizer does:
//!
//! 1. [`Framer::next`] is the streaming step. It finds the end of a message made of line
//!    fragments and literals (`... {5}\r\nhello ...\r\n`), says `Incomplete` when more bytes are
//!    needed, stops at each synchronising literal so the machine can decide whether to send the
//!    `+` continuation (only after the size is checked against `max_literal`), and enforces the
//!    line and literal limits *before* the bytes are buffered without bound.
//! 2. [`command`] parses one complete message with nom 8 combinators; it never sees a partial
//!    message, so every literal it meets is already whole.
//!
//! Bare LF is accepted as a line end where RFC 9051 says CRLF, as Dovecot does.

use std::borrow::Cow;

use nom::branch::alt;
use nom::bytes::complete::{tag_no_case, take, take_while, take_while1};
use nom::character::complete::{char, digit1};
use nom::combinator::{map, opt};
use nom::{IResult, Parser};

type Res<'a, T> = IResult<&'a [u8], T>;

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// How the framer treats a literal announcement at the end of a line fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralMode {
    /// Lines only (AUTHENTICATE continuation lines, RFC 9051 6.2.2): `{n}` is plain text.
    None,
    /// Downstream commands: `{n}` is synchronising and needs a `+` first, `{n+}` (RFC 7888
    /// LITERAL+) and `{n-}` are not.
    Client,
    /// Upstream responses: a server never waits for a continuation, every literal follows at once.
    Server,
}

/// Limits the framer enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Longest line fragment, line end included.
    pub max_line: usize,
    /// Largest single literal.
    pub max_literal: usize,
    /// Largest whole message (fragments plus literals), so a command of many small literals
    /// cannot grow the buffer without bound.
    pub max_message: usize,
    pub literals: LiteralMode,
}

/// What [`Framer::next`] found in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a frame result says whether to answer, wait or close"]
pub enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// `buf[..len]` is one complete message (final line end included).
    Complete { len: usize },
    /// A synchronising literal `{len}` was announced and fits the limit; its data would start at
    /// `buf[data_start]`. The caller either sends `+ ...` and calls
    /// [`Framer::accept_literal`], or answers `BAD`/`NO` and drops `buf[..data_start]` (the
    /// downstream then does not send the literal, RFC 9051 7.5).
    LiteralAnnounced { data_start: usize, len: usize },
    /// A literal over `max_literal` (or over the message limit). `sync` says whether the
    /// downstream waits for a continuation: then dropping `buf[..data_start]` resynchronises; a
    /// non-synchronising one cannot be skipped safely.
    LiteralTooLarge { data_start: usize, sync: bool },
    /// A line fragment, or the message, is over its limit.
    LineTooLong,
}

/// Resumable framing state over a caller-owned buffer whose message starts at index 0.
///
/// The state only records offsets, so the caller may append to the buffer between calls; it must
/// call [`Framer::reset`] whenever it removes bytes from the front.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Framer {
    /// Start of the line fragment being scanned (after the last literal).
    fragment_start: usize,
    /// Bytes before this index hold no LF (from `fragment_start` on).
    searched: usize,
}

impl Framer {
    /// Look for the end of the message at the front of `buf`.
    pub fn next(&mut self, buf: &[u8], limits: &FrameLimits) -> Frame {
        loop {
            if self.fragment_start > buf.len() {
                // Inside literal data still to arrive.
                return Frame::Incomplete;
            }
            let from = self.searched.max(self.fragment_start);
            let Some(found) = buf
                .get(from..)
                .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
            else {
                self.searched = buf.len();
                let pending = buf.len().saturating_sub(self.fragment_start);
                // A fragment of `max_line` bytes without LF can only end over the limit.
                if pending >= limits.max_line.max(1) || buf.len() > limits.max_message {
                    return Frame::LineTooLong;
                }
                return Frame::Incomplete;
            };
            let lf = from.saturating_add(found);
            let end = lf.saturating_add(1);
            if end.saturating_sub(self.fragment_start) > limits.max_line || end > limits.max_message
            {
                return Frame::LineTooLong;
            }
            let line = buf.get(self.fragment_start..lf).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let announced = match limits.literals {
                LiteralMode::None => None,
                LiteralMode::Client | LiteralMode::Server => literal_suffix(line),
            };
            let Some((len, client_sync)) = announced else {
                return Frame::Complete { len: end };
            };
            let sync = client_sync && limits.literals == LiteralMode::Client;
            let data_end = len.and_then(|n| end.checked_add(n));
            let (Some(len), Some(data_end)) = (len, data_end) else {
                return Frame::LiteralTooLarge {
                    data_start: end,
                    sync,
                };
            };
            if len > limits.max_literal || data_end > limits.max_message {
                return Frame::LiteralTooLarge {
                    data_start: end,
                    sync,
                };
            }
            if sync {
                // Stay on this fragment until the caller accepts the literal.
                self.searched = self.fragment_start;
                return Frame::LiteralAnnounced {
                    data_start: end,
                    len,
                };
            }
            self.fragment_start = data_end;
            self.searched = data_end;
        }
    }

    /// The caller sent the continuation for the literal [`Frame::LiteralAnnounced`] reported.
    pub fn accept_literal(&mut self, data_start: usize, len: usize) {
        self.fragment_start = data_start.saturating_add(len);
        self.searched = self.fragment_start;
    }

    /// The caller removed the message (or bytes before it) from the front of the buffer.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// `{` number [`+` / `-`] `}` at the very end of a line: `(length, synchronising)`. A length
/// that does not fit `usize` is `None` (always too large).
fn literal_suffix(line: &[u8]) -> Option<(Option<usize>, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let spec = inner.get(open.saturating_add(1)..)?;
    let (digits, sync) = match spec.split_last() {
        Some((b'+' | b'-', digits)) => (digits, false),
        _ => (spec, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((parse_number(digits), sync))
}

fn parse_number(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?
            .checked_add(usize::from(d.wrapping_sub(b'0')))
    })
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// One pre-auth command (RFC 9051 9):
///
/// ```text
/// command         = tag SP (command-any / command-auth / command-nonauth /
///                   command-select) CRLF
/// command-any     = "CAPABILITY" / "LOGOUT" / "NOOP" / x-command / id
/// command-nonauth = login / authenticate / "STARTTLS"
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command<'a> {
    pub tag: &'a str,
    pub body: CommandBody<'a>,
}

/// The command after its tag. Strings are unescaped; literal data is borrowed from the message.
#[derive(Clone, PartialEq, Eq)]
pub enum CommandBody<'a> {
    Capability,
    Noop,
    Logout,
    StartTls,
    /// RFC 2971 `ID`; `None` for `ID NIL`.
    Id(Option<Vec<IdParam<'a>>>),
    /// `LOGIN SP userid SP password`. The password is a credential: never print it.
    Login {
        user: Cow<'a, [u8]>,
        password: Cow<'a, [u8]>,
    },
    /// `AUTHENTICATE SP auth-type [SP initial-response]` (RFC 9051, RFC 4959).
    Authenticate {
        mechanism: &'a [u8],
        initial: Option<InitialResponse<'a>>,
    },
    /// Any other well-formed `tag SP atom ...` line; its arguments are not parsed.
    Other {
        name: &'a [u8],
    },
}

// Hand-written so a LOGIN password or a SASL-IR never reaches Debug output.
impl std::fmt::Debug for CommandBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Capability => f.write_str("Capability"),
            Self::Noop => f.write_str("Noop"),
            Self::Logout => f.write_str("Logout"),
            Self::StartTls => f.write_str("StartTls"),
            Self::Id(params) => f
                .debug_tuple("Id")
                .field(&params.as_ref().map(Vec::len))
                .finish(),
            Self::Login { user, .. } => f
                .debug_struct("Login")
                .field("user", &String::from_utf8_lossy(user))
                .field("password", &"/* REDACTED */")
                .finish(),
            Self::Authenticate { mechanism, initial } => f
                .debug_struct("Authenticate")
                .field("mechanism", &String::from_utf8_lossy(mechanism))
                .field("initial", &initial.as_ref().map(|_| "/* REDACTED */"))
                .finish(),
            Self::Other { name } => f
                .debug_struct("Other")
                .field("name", &String::from_utf8_lossy(name))
                .finish(),
        }
    }
}

/// One RFC 2971 `field value` pair; `None` for a `NIL` value.
pub type IdParam<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);

/// SASL-IR initial response (RFC 4959): `initial-response = base64 / "="`.
#[derive(Clone, PartialEq, Eq)]
pub enum InitialResponse<'a> {
    /// `=`: the client's first response is empty.
    Empty,
    /// Base64 text, not yet validated beyond its alphabet.
    Base64(&'a [u8]),
}

/// Why a complete message is not a command. Carries only the tag, never input bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed<'a> {
    /// The tag, when the message starts with `tag SP`, so the answer can be `tag BAD`.
    pub tag: Option<&'a str>,
}

/// Parse one complete message (as delimited by [`Framer`], final line end included).
pub fn command(msg: &[u8]) -> Result<Command<'_>, Malformed<'_>> {
    let Some((rest, tag)) = tag_sp(msg) else {
        return Err(Malformed { tag: None });
    };
    let malformed = Malformed { tag: Some(tag) };
    let Ok((rest, name)) = atom(rest) else {
        return Err(malformed);
    };
    let parsed = match name.to_ascii_uppercase().as_slice() {
        b"CAPABILITY" => end(rest, CommandBody::Capability),
        b"NOOP" => end(rest, CommandBody::Noop),
        b"LOGOUT" => end(rest, CommandBody::Logout),
        b"STARTTLS" => end(rest, CommandBody::StartTls),
        b"ID" => id(rest),
        b"LOGIN" => login(rest),
        b"AUTHENTICATE" => authenticate(rest),
        _ => Some(CommandBody::Other { name }),
    };
    parsed.map(|body| Command { tag, body }).ok_or(malformed)
}

/// `tag SP atom` at the front of a (possibly partial) message: for answering a command whose
/// message is not complete yet (a literal announcement, an over-long line).
pub fn command_head(msg: &[u8]) -> Option<(&str, &[u8])> {
    let (rest, tag) = tag_sp(msg)?;
    let (_, name) = atom(rest).ok()?;
    Some((tag, name))
}

/// The tag of a (possibly partial) message, when it starts with `tag SP`.
pub fn tag_prefix(msg: &[u8]) -> Option<&str> {
    tag_sp(msg).map(|(_, tag)| tag)
}

/// `tag = 1*<any ASTRING-CHAR except "+">`, then SP.
fn tag_sp(msg: &[u8]) -> Option<(&[u8], &str)> {
    let parsed: Res<'_, (&[u8], char)> = (take_while1(is_tag_char), char(' ')).parse(msg);
    let (rest, (tag, _)) = parsed.ok()?;
    // Tag chars are ASCII, so this never fails.
    std::str::from_utf8(tag).ok().map(|tag| (rest, tag))
}

/// Arguments done: only the line end may follow.
fn end<'a>(rest: &'a [u8], body: CommandBody<'a>) -> Option<CommandBody<'a>> {
    crlf_end(rest).then_some(body)
}

fn crlf_end(rest: &[u8]) -> bool {
    matches!(rest, b"\r\n" | b"\n")
}

/// RFC 2971 3.3:
///
/// ```text
/// id            ::= "ID" SPACE id_params_list
/// id_params_list ::= "(" #(string SPACE nstring) ")" / nil
///                     ;; list of field value pairs
/// ```
///
/// An empty list `()` is accepted too (RFC 2971 asks for at least one pair; clients differ).
fn id(rest: &[u8]) -> Option<CommandBody<'_>> {
    let (rest, _) = char::<_, nom::error::Error<&[u8]>>(' ').parse(rest).ok()?;
    if let Ok((rest, _)) = tag_no_case::<_, _, nom::error::Error<&[u8]>>("NIL").parse(rest) {
        return end(rest, CommandBody::Id(None));
    }
    let (mut rest, _) = char::<_, nom::error::Error<&[u8]>>('(').parse(rest).ok()?;
    let mut params = Vec::new();
    loop {
        if let Ok((after, _)) = char::<_, nom::error::Error<&[u8]>>(')').parse(rest) {
            return end(after, CommandBody::Id(Some(params)));
        }
        if !params.is_empty() {
            rest = char::<_, nom::error::Error<&[u8]>>(' ').parse(rest).ok()?.0;
        }
        let (after, (field, _, value)) = (string, char(' '), nstring).parse(rest).ok()?;
        params.push((field, value));
        rest = after;
    }
}

/// RFC 9051 6.2.3 / 9:
///
/// ```text
/// login    = "LOGIN" SP userid SP password
/// userid   = astring
/// password = astring
/// ```
fn login(rest: &[u8]) -> Option<CommandBody<'_>> {
    let (rest, (_, user, _, password)) =
        (char(' '), astring, char(' '), astring).parse(rest).ok()?;
    end(rest, CommandBody::Login { user, password })
}

/// RFC 9051 9 with RFC 4959 SASL-IR:
///
/// ```text
/// authenticate     = "AUTHENTICATE" SP auth-type [SP initial-response]
/// auth-type        = atom
/// initial-response = base64 / "="
/// base64           = *(4base64-char) [base64-terminal]
/// ```
///
/// The base64 is only checked for its alphabet here; the machine decodes it strictly.
fn authenticate(rest: &[u8]) -> Option<CommandBody<'_>> {
    let (rest, (_, mechanism)) = (char(' '), atom).parse(rest).ok()?;
    let parsed: Res<'_, Option<(char, &[u8])>> =
        opt((char(' '), take_while1(is_base64_char))).parse(rest);
    let (rest, initial) = parsed.ok()?;
    let initial = initial.map(|(_, text)| {
        if text == b"=" {
            InitialResponse::Empty
        } else {
            InitialResponse::Base64(text)
        }
    });
    end(rest, CommandBody::Authenticate { mechanism, initial })
}

impl std::fmt::Debug for InitialResponse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Base64(_) => f.write_str("Base64(/* REDACTED */)"),
        }
    }
}

/// A line answering an AUTHENTICATE continuation (RFC 9051 6.2.2): `*` cancels.
#[derive(Clone, PartialEq, Eq)]
pub enum SaslResponse<'a> {
    Cancel,
    /// Base64 text (possibly empty, the empty response); `=` is read as empty too.
    Base64(&'a [u8]),
}

impl std::fmt::Debug for SaslResponse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cancel => f.write_str("Cancel"),
            Self::Base64(_) => f.write_str("Base64(/* REDACTED */)"),
        }
    }
}

/// ```text
/// authenticate-response = (base64 / "*") CRLF      ; RFC 9051 6.2.2, "*" cancels
/// ```
///
/// Returns `None` for a line holding anything else.
pub fn authenticate_response(line: &[u8]) -> Option<SaslResponse<'_>> {
    let parsed: Res<'_, SaslResponse<'_>> = alt((
        map(char('*'), |_| SaslResponse::Cancel),
        map(take_while(is_base64_char), |text: &[u8]| {
            SaslResponse::Base64(if text == b"=" { b"" } else { text })
        }),
    ))
    .parse(line);
    let (rest, response) = parsed.ok()?;
    crlf_end(rest).then_some(response)
}

/// RFC 9051 9:
///
/// ```text
/// astring        = 1*ASTRING-CHAR / string
/// ASTRING-CHAR   = ATOM-CHAR / resp-specials
/// ```
///
/// Leniency: `*` and `%` (list-wildcards) are taken inside an atom too, as Dovecot does.
/// Python's imaplib sends the LOGIN user name unquoted, so a shared-mailbox login
/// `office@contoso.com*alice@example.com` (Dovecot's master-user separator) arrives bare.
fn astring(i: &[u8]) -> Res<'_, Cow<'_, [u8]>> {
    alt((
        map(
            take_while1(|b| is_astring_char(b) || b == b'*' || b == b'%'),
            Cow::Borrowed,
        ),
        string,
    ))
    .parse(i)
}

/// `nstring = string / nil` (RFC 9051 9).
fn nstring(i: &[u8]) -> Res<'_, Option<Cow<'_, [u8]>>> {
    alt((map(tag_no_case("NIL"), |_| None), map(string, Some))).parse(i)
}

/// `string = quoted / literal` (RFC 9051 9).
fn string(i: &[u8]) -> Res<'_, Cow<'_, [u8]>> {
    alt((quoted, map(literal, Cow::Borrowed))).parse(i)
}

/// RFC 9051 9:
///
/// ```text
/// quoted          = DQUOTE *QUOTED-CHAR DQUOTE
/// QUOTED-CHAR     = <any TEXT-CHAR except quoted-specials> /
///                   "\" quoted-specials / UTF8-2 / UTF8-3 / UTF8-4
/// quoted-specials = DQUOTE / "\"
/// TEXT-CHAR       = <any CHAR except CR and LF>      ; CHAR excludes NUL
/// ```
///
/// Bytes from 0x80 are passed through; the caller checks UTF-8 where it matters.
fn quoted(i: &[u8]) -> Res<'_, Cow<'_, [u8]>> {
    let fail = || nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Char));
    let body = i.strip_prefix(b"\"").ok_or_else(fail)?;
    let mut out: Option<Vec<u8>> = None;
    let mut idx = 0;
    while let Some(&b) = body.get(idx) {
        match b {
            b'"' => {
                let rest = body.get(idx.saturating_add(1)..).unwrap_or_default();
                let value = match out {
                    Some(owned) => Cow::Owned(owned),
                    None => Cow::Borrowed(body.get(..idx).unwrap_or_default()),
                };
                return Ok((rest, value));
            }
            b'\\' => {
                let escaped = match body.get(idx.saturating_add(1)) {
                    Some(&e @ (b'"' | b'\\')) => e,
                    _ => return Err(fail()),
                };
                out.get_or_insert_with(|| body.get(..idx).unwrap_or_default().to_vec())
                    .push(escaped);
                idx = idx.saturating_add(2);
            }
            0 | b'\r' | b'\n' => return Err(fail()),
            b => {
                if let Some(owned) = out.as_mut() {
                    owned.push(b);
                }
                idx = idx.saturating_add(1);
            }
        }
    }
    Err(fail())
}

/// RFC 9051 9 with RFC 7888:
///
/// ```text
/// literal  = "{" number64 ["+"] "}" CRLF *CHAR8
///              ; Number represents the number of CHAR8s.
/// CHAR8    = %x01-ff                 ; any OCTET except NUL
/// ```
///
/// `{n-}` is accepted as a non-synchronising literal too.
fn literal(i: &[u8]) -> Res<'_, &[u8]> {
    let (rest, (_, digits, _, _, _, _)) = (
        char('{'),
        digit1,
        opt(alt((char('+'), char('-')))),
        char('}'),
        opt(char('\r')),
        char('\n'),
    )
        .parse(i)?;
    let fail = || nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Count));
    let len = parse_number(digits).ok_or_else(fail)?;
    let (rest, data) = take(len).parse(rest)?;
    if data.contains(&0) {
        return Err(fail());
    }
    Ok((rest, data))
}

/// `atom = 1*ATOM-CHAR` (RFC 9051 9).
fn atom(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(is_atom_char).parse(i)
}

/// Whether `bytes` is one `atom` (RFC 9051 9), as a capability name must be.
pub fn is_atom(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_atom_char(b))
}

/// ```text
/// ATOM-CHAR       = <any CHAR except atom-specials>
/// atom-specials   = "(" / ")" / "{" / SP / CTL / list-wildcards /
///                   quoted-specials / resp-specials
/// list-wildcards  = "%" / "*"
/// resp-specials   = "]"
/// ```
fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b)
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_tag_char(b: u8) -> bool {
    is_astring_char(b) && b != b'+'
}

/// `base64-char = ALPHA / DIGIT / "+" / "/"`, plus the `=` of `base64-terminal`.
fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_line: 64,
        max_literal: 16,
        max_message: 200,
        literals: LiteralMode::Client,
    };

    /// Frame `input` feeding it in chunks of `chunk`, accepting every announced literal; returns
    /// the frames seen (Incomplete omitted).
    fn frames(input: &[u8], chunk: usize, limits: &FrameLimits) -> Vec<Frame> {
        let mut framer = Framer::default();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(part);
            loop {
                match framer.next(&buf, limits) {
                    Frame::Incomplete => break,
                    f @ Frame::LiteralAnnounced { data_start, len } => {
                        seen.push(f);
                        framer.accept_literal(data_start, len);
                    }
                    f @ Frame::Complete { len } => {
                        seen.push(f);
                        buf.drain(..len);
                        framer.reset();
                    }
                    f => {
                        seen.push(f);
                        return seen;
                    }
                }
            }
        }
        seen
    }

    #[test]
    fn framing_table() {
        use Frame::*;
        let table: &[(&[u8], &[Frame])] = &[
            (b"a NOOP\r\n", &[Complete { len: 8 }]),
            (b"a NOOP\n", &[Complete { len: 7 }]),
            (
                b"a NOOP\r\nb NOOP\r\n",
                &[Complete { len: 8 }, Complete { len: 8 }],
            ),
            (
                b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n",
                &[
                    LiteralAnnounced {
                        data_start: 13,
                        len: 3,
                    },
                    Complete { len: 27 },
                ],
            ),
            (b"a LOGIN {3-}\r\nbob x\r\n", &[Complete { len: 21 }]),
            (
                b"a LOGIN {17}\r\n",
                &[LiteralTooLarge {
                    data_start: 14,
                    sync: true,
                }],
            ),
            (
                b"a LOGIN {99999999999999999999999+}\r\n",
                &[LiteralTooLarge {
                    data_start: 36,
                    sync: false,
                }],
            ),
            (&[b'x'; 70], &[LineTooLong]),
            (b"a {x}\r\n", &[Complete { len: 7 }]),
        ];
        for (input, expected) in table {
            for chunk in 1..=input.len() {
                assert_eq!(
                    frames(input, chunk, &LIMITS),
                    *expected,
                    "{:?} chunk {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn framing_literal_data_may_hold_line_ends() {
        let input = b"a LOGIN bob {4+}\r\n\r\n\r\n\r\n";
        for chunk in 1..=input.len() {
            assert_eq!(frames(input, chunk, &LIMITS), [Frame::Complete { len: 24 }]);
        }
    }

    #[test]
    fn framing_lines_only_and_server_mode() {
        let lines = FrameLimits {
            literals: LiteralMode::None,
            ..LIMITS
        };
        assert_eq!(frames(b"{3}\r\n", 1, &lines), [Frame::Complete { len: 5 }]);
        let server = FrameLimits {
            literals: LiteralMode::Server,
            ..LIMITS
        };
        assert_eq!(
            frames(b"* X {3}\r\nabc\r\n", 1, &server),
            [Frame::Complete { len: 14 }]
        );
    }

    #[test]
    fn framing_message_limit() {
        let limits = FrameLimits {
            max_message: 30,
            ..LIMITS
        };
        for chunk in [1, 7, 100] {
            assert_eq!(
                frames(b"a ID ({5+}\r\naaaaa {9+}\r\n", chunk, &limits),
                [Frame::LiteralTooLarge {
                    data_start: 24,
                    sync: false
                }]
            );
        }
        assert_eq!(
            frames(
                b"a ID ({5+}\r\naaaaa {5+}\r\nbbbbb {5+}\r\nccccc)\r\n",
                1,
                &limits
            ),
            [Frame::LineTooLong]
        );
    }

    fn body(msg: &[u8]) -> CommandBody<'_> {
        command(msg).unwrap().body
    }

    #[test]
    fn command_table() {
        use CommandBody::*;
        let table: &[(&[u8], CommandBody<'_>)] = &[
            (b"a CAPABILITY\r\n", Capability),
            (b"a capability\n", Capability),
            (b"a1 NoOp\r\n", Noop),
            (b"x LOGOUT\r\n", Logout),
            (b"x starttls\r\n", StartTls),
            (b"x ID NIL\r\n", Id(None)),
            (b"x ID ()\r\n", Id(Some(vec![]))),
            (
                b"x ID (\"name\" \"mutt\" \"version\" NIL)\r\n",
                Id(Some(vec![
                    (
                        Cow::Borrowed(&b"name"[..]),
                        Some(Cow::Borrowed(&b"mutt"[..])),
                    ),
                    (Cow::Borrowed(&b"version"[..]), None),
                ])),
            ),
            (
                b"x ID ({4+}\r\nname {1+}\r\nm)\r\n",
                Id(Some(vec![(
                    Cow::Borrowed(&b"name"[..]),
                    Some(Cow::Borrowed(&b"m"[..])),
                )])),
            ),
            (
                b"a LOGIN alice s3cret\r\n",
                Login {
                    user: Cow::Borrowed(b"alice"),
                    password: Cow::Borrowed(b"s3cret"),
                },
            ),
            (
                b"a LOGIN \"al ice\" \"p\\\"w\\\\d\"\r\n",
                Login {
                    user: Cow::Borrowed(b"al ice"),
                    password: Cow::Borrowed(b"p\"w\\d"),
                },
            ),
            (
                b"a LOGIN {5}\r\nalice {4+}\r\np\r\nw\r\n",
                Login {
                    user: Cow::Borrowed(b"alice"),
                    password: Cow::Borrowed(b"p\r\nw"),
                },
            ),
            (
                b"a LOGIN \"\" ]x]\r\n",
                Login {
                    user: Cow::Borrowed(b""),
                    password: Cow::Borrowed(b"]x]"),
                },
            ),
            (
                b"a AUTHENTICATE plain\r\n",
                Authenticate {
                    mechanism: b"plain",
                    initial: None,
                },
            ),
            (
                b"a AUTHENTICATE PLAIN =\r\n",
                Authenticate {
                    mechanism: b"PLAIN",
                    initial: Some(InitialResponse::Empty),
                },
            ),
            (
                b"a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n",
                Authenticate {
                    mechanism: b"PLAIN",
                    initial: Some(InitialResponse::Base64(b"AGFsaWNlAHB3")),
                },
            ),
            (b"a SELECT INBOX\r\n", Other { name: b"SELECT" }),
            (b"a FOO {3+}\r\nabc\r\n", Other { name: b"FOO" }),
        ];
        for (msg, expected) in table {
            assert_eq!(body(msg), *expected, "{}", String::from_utf8_lossy(msg));
        }
    }

    #[test]
    fn command_errors_keep_the_tag() {
        let table: &[(&[u8], Option<&str>)] = &[
            (b"\r\n", None),
            (b" NOOP\r\n", None),
            (b"a+ NOOP\r\n", None),
            (b"a\r\n", None),
            (b"a \r\n", Some("a")),
            (b"a NOOP x\r\n", Some("a")),
            (b"a LOGIN alice\r\n", Some("a")),
            (b"a LOGIN alice \"p\0w\"\r\n", Some("a")),
            (b"a LOGIN alice {3+}\r\np\0w\r\n", Some("a")),
            (b"a LOGIN alice \"unterminated\r\n", Some("a")),
            (b"a LOGIN alice \"bad\\escape\"\r\n", Some("a")),
            (b"a LOGIN alice {9+}\r\nshort\r\n", Some("a")),
            (b"a AUTHENTICATE\r\n", Some("a")),
            (b"a AUTHENTICATE PLAIN !!\r\n", Some("a")),
            (b"a ID (\"name\")\r\n", Some("a")),
            (b"a ID \"name\" \"x\"\r\n", Some("a")),
            (b"a CAPABILITY", Some("a")),
        ];
        for (msg, tag) in table {
            assert_eq!(
                command(msg),
                Err(Malformed { tag: *tag }),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn heads_and_sasl_lines() {
        assert_eq!(command_head(b"a LOGIN {5}\r\n"), Some(("a", &b"LOGIN"[..])));
        assert_eq!(command_head(b"{5}\r\n"), None);
        assert_eq!(tag_prefix(b"abc SELECT"), Some("abc"));
        assert_eq!(authenticate_response(b"*\r\n"), Some(SaslResponse::Cancel));
        assert_eq!(
            authenticate_response(b"\r\n"),
            Some(SaslResponse::Base64(b""))
        );
        assert_eq!(
            authenticate_response(b"=\r\n"),
            Some(SaslResponse::Base64(b""))
        );
        assert_eq!(
            authenticate_response(b"AQ==\n"),
            Some(SaslResponse::Base64(b"AQ=="))
        );
        assert_eq!(authenticate_response(b"* x\r\n"), None);
        assert_eq!(authenticate_response(b"a b\r\n"), None);
    }

    #[test]
    fn debug_redacts_passwords() {
        let cmd = command(b"a LOGIN alice hunter2\r\n").unwrap();
        assert!(!format!("{cmd:?}").contains("hunter2"));
        let cmd = command(b"a AUTHENTICATE PLAIN AGFsaWNlAGh1bnRlcjI=\r\n").unwrap();
        assert!(!format!("{cmd:?}").contains("AGFsaWNlAGh1bnRlcjI"));
    }
}
