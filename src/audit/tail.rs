//! Stage: audit, reader. An audit file in, filtered records out as an aligned table or as the
//! raw JSON lines; behind `mailgate audit tail`.
//!
//! Filtering works per session, because one session's story is spread over several records and
//! only some of them carry each field:
//!
//! - `--since` and `--session` apply to every record on its own.
//! - `--user`, `--decision` and `--reason` select `auth` records. A session with a selected
//!   `auth` record is shown whole: its `connect` (held back until the `auth` arrives), the
//!   selected `auth` records and everything after (`session_end`). `auth` records of that
//!   session that do not match are not shown.
//! - `--protocol` selects sessions by the protocol of their `connect` record.
//! - Any of these four hides `reload` records, which belong to no session.
//! - All filters combine (AND).
//!
//! `--follow` keeps reading at the end of the file, polling every [`POLL`]. When the path names
//! a different file (logrotate renamed it and mailgate reopened) it reads the old file to its
//! end and switches to the new one from its start; when the file shrinks (`copytruncate`) it
//! starts again from the top. So no record written across a rotation is missed.
//!
//! Must not: trust the file. Lines that are not JSON objects are skipped and counted; control,
//! bidi and invisible characters in values (a user name is whatever a client sent) are escaped
//! in the table (`\u{202e}`) and in `--json` output (`\u202e`), so a crafted login can neither
//! drive the operator's terminal nor display as somebody else.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::Verdict;
use super::record::{is_deceptive, write_json_escaped};
use crate::config::duration::DurationError;
use crate::proto::Protocol;

/// How often `--follow` looks for new data and for rotation: well under a human's notice,
/// negligible load (one `stat` per poll).
pub const POLL: Duration = Duration::from_millis(200);
/// Sessions whose `connect` or match state is remembered; older ones are forgotten first.
/// Sessions end with `session_end`, which frees their slot, so only sessions that are live (or
/// lost their end to a crash) count.
pub const MAX_TRACKED_SESSIONS: usize = 100_000;
/// Table column widths, fixed so a followed table stays aligned; longer values push the row.
const WIDTHS: [usize; 7] = [24, 11, 12, 24, 5, 8, 23];

/// Which records to show. Every field set must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `auth.user`, exact.
    pub user: Option<String>,
    /// `auth.mailbox`, exact: the shared mailbox opened ("who read office@ last week").
    pub mailbox: Option<String>,
    pub decision: Option<Verdict>,
    /// `auth.reason`, exact (`ok` or one of the refusal codes).
    pub reason: Option<String>,
    /// The session's `connect.protocol`.
    pub protocol: Option<Protocol>,
    /// The session id, or its end (the `ref` shown in refusal texts).
    pub session: Option<String>,
    /// Records stamped at or after this instant.
    pub since: Option<SystemTime>,
}

impl Filter {
    /// True when records are selected per session (and `reload` records hidden).
    fn by_session(&self) -> bool {
        self.user.is_some()
            || self.mailbox.is_some()
            || self.decision.is_some()
            || self.reason.is_some()
            || self.protocol.is_some()
    }

    fn by_auth(&self) -> bool {
        self.user.is_some()
            || self.mailbox.is_some()
            || self.decision.is_some()
            || self.reason.is_some()
    }

    fn auth_matches(&self, r: &Map<String, Value>) -> bool {
        self.user
            .as_deref()
            .is_none_or(|u| str_field(r, "user") == Some(u))
            && self
                .mailbox
                .as_deref()
                .is_none_or(|m| str_field(r, "mailbox") == Some(m))
            && self
                .decision
                .is_none_or(|d| str_field(r, "decision") == Some(d.as_str()))
            && self
                .reason
                .as_deref()
                .is_none_or(|x| str_field(r, "reason") == Some(x))
    }

    fn record_matches(&self, r: &Map<String, Value>) -> bool {
        let session_ok = self.session.as_deref().is_none_or(|want| {
            str_field(r, "session").is_some_and(|s| !want.is_empty() && s.ends_with(want))
        });
        let since_ok = self.since.is_none_or(|since| {
            str_field(r, "ts")
                .and_then(parse_ts)
                .is_some_and(|ts| ts >= since)
        });
        session_ok && since_ok
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns with a header line.
    #[default]
    Table,
    /// The matching lines exactly as they are in the file.
    Json,
}

/// What `mailgate audit tail` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub file: PathBuf,
    pub follow: bool,
    pub filter: Filter,
    pub format: Format,
    /// Poll interval for `follow`; [`POLL`] unless a test wants it shorter.
    pub poll: Duration,
}

/// Why tailing stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write output: {0}")]
    Output(io::Error),
}

/// What a finished (not followed) run saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub shown: u64,
    /// Lines that were not JSON objects (skipped).
    pub malformed: u64,
}

/// Reads `options.file` and writes the matching records to `out`. Returns at the end of the file,
/// or with `follow` only when `out` is closed (a closed pipe is a normal end, not an error).
pub fn run(options: &Options, out: &mut dyn Write) -> Result<Summary, Error> {
    let mut printer = Printer::new(options, out);
    match tail(options, &mut printer) {
        Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(printer.summary),
        other => other.map(|()| printer.summary),
    }
}

fn tail(options: &Options, printer: &mut Printer<'_>) -> Result<(), Error> {
    let path = options.file.as_path();
    let mut reader = match Reader::open(path) {
        Ok(reader) => reader,
        Err(source) if options.follow && source.kind() == io::ErrorKind::NotFound => {
            printer.header()?;
            wait_for(path, options.poll)
        }
        Err(source) => {
            return Err(Error::Open {
                path: path.to_owned(),
                source,
            });
        }
    };
    printer.header()?;
    loop {
        reader.read_lines(printer)?;
        printer.flush()?;
        if !options.follow {
            // A last line without its newline (a writer that crashed mid-line) still counts.
            return reader.finish(printer);
        }
        std::thread::sleep(options.poll);
        match reader.rotated(path) {
            Rotation::Same => {}
            Rotation::Truncated => reader.restart()?,
            Rotation::Replaced(file) => {
                // What the writer put in the old file before it reopened comes first.
                reader.read_lines(printer)?;
                reader.finish(printer)?;
                reader = Reader::from_file(path, file)?;
            }
        }
    }
}

/// Polls until `path` exists.
fn wait_for(path: &Path, poll: Duration) -> Reader {
    loop {
        if let Ok(reader) = Reader::open(path) {
            return reader;
        }
        std::thread::sleep(poll);
    }
}

enum Rotation {
    Same,
    Truncated,
    Replaced(File),
}

struct Reader {
    path: PathBuf,
    inner: BufReader<File>,
    /// (device, inode) of the open file.
    id: (u64, u64),
    /// Bytes consumed, complete lines only.
    position: u64,
    /// A line whose newline has not arrived yet.
    partial: Vec<u8>,
}

impl Reader {
    fn open(path: &Path) -> io::Result<Reader> {
        let file = File::open(path)?;
        Self::from_file(path, file).map_err(|e| match e {
            Error::Open { source, .. } | Error::Read { source, .. } | Error::Output(source) => {
                source
            }
        })
    }

    fn from_file(path: &Path, file: File) -> Result<Reader, Error> {
        let meta = file.metadata().map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Reader {
            path: path.to_owned(),
            inner: BufReader::new(file),
            id: (meta.dev(), meta.ino()),
            position: 0,
            partial: Vec::new(),
        })
    }

    fn read_error(&self, source: io::Error) -> Error {
        Error::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// Hands every complete line available now to `printer`.
    fn read_lines(&mut self, printer: &mut Printer<'_>) -> Result<(), Error> {
        loop {
            let n = self
                .inner
                .read_until(b'\n', &mut self.partial)
                .map_err(|e| self.read_error(e))?;
            if n == 0 || self.partial.last() != Some(&b'\n') {
                return Ok(());
            }
            self.position += self.partial.len() as u64;
            let line = std::mem::take(&mut self.partial);
            printer.line(&line)?;
        }
    }

    /// Treats a trailing line without newline as complete.
    fn finish(&mut self, printer: &mut Printer<'_>) -> Result<(), Error> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            printer.line(&line)?;
        }
        printer.flush()
    }

    fn rotated(&self, path: &Path) -> Rotation {
        match std::fs::metadata(path) {
            // Renamed away and not yet recreated: keep reading the old one.
            Err(_) => Rotation::Same,
            Ok(meta) if (meta.dev(), meta.ino()) != self.id => match File::open(path) {
                Ok(file) => Rotation::Replaced(file),
                Err(_) => Rotation::Same,
            },
            Ok(_) => match self.inner.get_ref().metadata() {
                Ok(meta) if meta.len() < self.position => Rotation::Truncated,
                _ => Rotation::Same,
            },
        }
    }

    fn restart(&mut self) -> Result<(), Error> {
        self.inner
            .seek(SeekFrom::Start(0))
            .map_err(|e| self.read_error(e))?;
        self.position = 0;
        self.partial.clear();
        Ok(())
    }
}

/// What is remembered about a session seen in the file.
#[derive(Default)]
struct Session {
    protocol: Option<String>,
    user: Option<String>,
    /// The session passed the filters: show its later records.
    matched: bool,
    /// The session can no longer match (wrong protocol).
    excluded: bool,
    /// Its `connect` line, held back until an `auth` record decides.
    pending: Option<Vec<u8>>,
}

struct Printer<'a> {
    out: &'a mut dyn Write,
    filter: &'a Filter,
    format: Format,
    sessions: HashMap<String, Session>,
    /// Insertion order, for forgetting the oldest sessions; may name sessions already gone.
    order: VecDeque<String>,
    summary: Summary,
    header_done: bool,
}

impl<'a> Printer<'a> {
    fn new(options: &'a Options, out: &'a mut dyn Write) -> Printer<'a> {
        Printer {
            out,
            filter: &options.filter,
            format: options.format,
            sessions: HashMap::new(),
            order: VecDeque::new(),
            summary: Summary::default(),
            header_done: false,
        }
    }

    fn header(&mut self) -> Result<(), Error> {
        if self.format == Format::Table && !self.header_done {
            self.header_done = true;
            let cells = [
                "TIME", "EVENT", "SESSION", "USER", "PROTO", "DECISION", "REASON", "DETAIL",
            ];
            let row = row(&cells.map(str::to_owned));
            self.out.write_all(row.as_bytes()).map_err(Error::Output)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(Error::Output)
    }

    fn line(&mut self, raw: &[u8]) -> Result<(), Error> {
        let raw = trim_newline(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            // The sink starts a fresh line after a failed write; blank lines carry nothing.
            return Ok(());
        }
        let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(raw) else {
            self.summary.malformed += 1;
            return Ok(());
        };
        let event = str_field(&record, "event").unwrap_or("");
        let Some(id) = str_field(&record, "session").map(str::to_owned) else {
            // reload and other process records.
            if !self.filter.by_session() && self.filter.record_matches(&record) {
                self.show(raw, &record, None)?;
            }
            return Ok(());
        };
        match event {
            "connect" => {
                let protocol = str_field(&record, "protocol").map(str::to_owned);
                let excluded = self
                    .filter
                    .protocol
                    .is_some_and(|p| protocol.as_deref() != Some(p.as_str()));
                let matched = !excluded && !self.filter.by_auth();
                let pending = (!excluded && !matched).then(|| raw.to_vec());
                self.track(
                    &id,
                    Session {
                        protocol,
                        user: None,
                        matched,
                        excluded,
                        pending,
                    },
                );
                if matched {
                    self.show_if(raw, &record, &id)?;
                }
            }
            "auth" => {
                if !self.sessions.contains_key(&id) {
                    // Its connect was before the file started (or was forgotten).
                    self.track(
                        &id,
                        Session {
                            excluded: self.filter.protocol.is_some(),
                            matched: !self.filter.by_session(),
                            ..Session::default()
                        },
                    );
                }
                let user = str_field(&record, "user").map(str::to_owned);
                let selected = self.filter.auth_matches(&record);
                let Some(session) = self.sessions.get_mut(&id) else {
                    return Ok(());
                };
                session.user = user.or(session.user.take());
                if session.excluded || (!selected && self.filter.by_auth()) {
                    return Ok(());
                }
                session.matched = true;
                if let Some(connect) = session.pending.take()
                    && let Ok(Value::Object(c)) = serde_json::from_slice::<Value>(&connect)
                {
                    self.show_if(&connect, &c, &id)?;
                }
                self.show_if(raw, &record, &id)?;
            }
            _ => {
                let matched = match self.sessions.get(&id) {
                    Some(s) => s.matched,
                    None => !self.filter.by_session(),
                };
                if matched {
                    self.show_if(raw, &record, &id)?;
                }
                if event == "session_end" {
                    self.sessions.remove(&id);
                }
            }
        }
        Ok(())
    }

    fn track(&mut self, id: &str, session: Session) {
        if self.sessions.insert(id.to_owned(), session).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.sessions.len() > MAX_TRACKED_SESSIONS {
            match self.order.pop_front() {
                Some(old) => {
                    self.sessions.remove(&old);
                }
                None => break,
            }
        }
        // Ended sessions leave names behind in `order`; compact once they dominate.
        if self.order.len() > 2 * MAX_TRACKED_SESSIONS {
            let sessions = &self.sessions;
            self.order.retain(|s| sessions.contains_key(s));
        }
    }

    fn show_if(&mut self, raw: &[u8], record: &Map<String, Value>, id: &str) -> Result<(), Error> {
        if self.filter.record_matches(record) {
            self.show(raw, record, Some(id))
        } else {
            Ok(())
        }
    }

    fn show(
        &mut self,
        raw: &[u8],
        record: &Map<String, Value>,
        id: Option<&str>,
    ) -> Result<(), Error> {
        self.summary.shown += 1;
        match self.format {
            Format::Json => {
                // The line parsed as JSON, so it is UTF-8; a raw U+2028 or U+202E (a file
                // written by an older mailgate, or by hand) leaves as a JSON escape.
                let text = String::from_utf8_lossy(raw);
                write_json_escaped(&mut *self.out, &text).map_err(Error::Output)?;
                self.out.write_all(b"\n").map_err(Error::Output)
            }
            Format::Table => {
                let session = id.and_then(|id| self.sessions.get(id));
                let text = table_row(record, id, session);
                self.out.write_all(text.as_bytes()).map_err(Error::Output)
            }
        }
    }
}

fn table_row(record: &Map<String, Value>, id: Option<&str>, session: Option<&Session>) -> String {
    let event = str_field(record, "event").unwrap_or("?");
    let reference = id.map_or_else(|| "-".to_owned(), short_session);
    let user = match event {
        "auth" => str_field(record, "user").map(str::to_owned),
        _ => session.and_then(|s| s.user.clone()),
    };
    let protocol = str_field(record, "protocol")
        .map(str::to_owned)
        .or_else(|| session.and_then(|s| s.protocol.clone()));
    let (decision, reason) = match event {
        "auth" => (str_field(record, "decision"), str_field(record, "reason")),
        _ => (None, None),
    };
    let cells = [
        str_field(record, "ts").unwrap_or("-").to_owned(),
        event.to_owned(),
        reference,
        user.unwrap_or_else(|| "-".to_owned()),
        protocol.unwrap_or_else(|| "-".to_owned()),
        decision.unwrap_or("-").to_owned(),
        reason.unwrap_or("-").to_owned(),
        detail(event, record),
    ];
    row(&cells.map(|c| escape(&c)))
}

/// The columns not shown elsewhere, as `key=value` pairs; nulls left out.
fn detail(event: &str, record: &Map<String, Value>) -> String {
    let keys: &[(&str, &str)] = match event {
        "connect" => &[
            ("listener", "listener"),
            ("client", "client"),
            ("tls", "tls"),
            ("sni", "sni"),
        ],
        "auth" => &[
            ("mailbox", "mailbox"),
            ("grant", "grant"),
            ("mechanism", "mechanism"),
            ("ou", "ou"),
            ("policy_source", "source"),
            ("upstream", "upstream"),
            ("client_id", "client_id"),
            ("issuer", "issuer"),
        ],
        "session_end" => &[
            ("end", "end"),
            ("bytes_up", "up"),
            ("bytes_down", "down"),
            ("duration_ms", "ms"),
        ],
        "reload" => &[
            ("result", "result"),
            ("source", "source"),
            ("config_digest", "digest"),
            ("changes", "changes"),
            ("error", "error"),
        ],
        "grant" => &[("grant", "grant"), ("state", "state"), ("detail", "detail")],
        _ => &[],
    };
    let pairs: Vec<String> = if keys.is_empty() {
        // An event this version does not know: show all it has.
        record
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ts" | "event" | "session"))
            .filter_map(|(k, v)| value_text(v).map(|v| format!("{k}={v}")))
            .collect()
    } else {
        keys.iter()
            .filter_map(|(key, label)| {
                record
                    .get(*key)
                    .and_then(value_text)
                    .map(|v| format!("{label}={v}"))
            })
            .collect()
    };
    pairs.join(" ")
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn row(cells: &[String; 8]) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        match WIDTHS.get(i) {
            Some(width) => {
                out.push_str(&format!("{cell:<width$}"));
                out.push(' ');
            }
            None => out.push_str(cell),
        }
    }
    let mut out = out.trim_end().to_owned();
    out.push('\n');
    out
}

/// The session id's last 12 characters: the `ref` a refused user is shown.
fn short_session(id: &str) -> String {
    let start = id.char_indices().rev().nth(11).map_or(0, |(i, _)| i);
    id.get(start..).unwrap_or(id).to_owned()
}

/// Control characters (ESC, CR, C1 CSI ...), bidi controls and invisible characters shown as
/// escapes (`\u{1b}`, `\u{202e}`), never sent to the terminal.
fn escape(text: &str) -> String {
    if !text.chars().any(is_deceptive) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if is_deceptive(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn str_field<'r>(record: &'r Map<String, Value>, key: &str) -> Option<&'r str> {
    record.get(key).and_then(Value::as_str)
}

/// Parses an RFC 3339 timestamp (any offset).
pub fn parse_ts(text: &str) -> Option<SystemTime> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    let since_epoch = Duration::from_nanos(u64::try_from(nanos).ok()?);
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

/// `--since`: a duration back from `now` (`"90s"`, `"10m"`, `"2h"`, `"7d"`) or an RFC 3339
/// instant (`"2026-11-25T17:00:00Z"`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Some(at) = parse_ts(text) {
        return Ok(at);
    }
    // The config's duration grammar, which takes days too ("7d": a week of records).
    let back = crate::config::duration::parse(text).map_err(|e| match e {
        DurationError::Overflow => format!("{text:?}: too large"),
        _ => format!(
            "{text:?}: expected a number followed by ms, s, m, h or d (\"10m\", \"2h\", \"7d\"), \
             or an RFC 3339 time"
        ),
    })?;
    Ok(now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH))
}

#[cfg(test)]
mod tests;
