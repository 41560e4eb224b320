//! Filter semantics and table rendering over a small generated audit file.

use std::net::SocketAddr;

use super::*;
use crate::audit::record::{Auth, Connect, End, Event, Record, Reload, ReloadOutcome, SessionEnd};
use crate::policy::Reason;
use crate::proto::Mechanism;

fn at(minutes_ago: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(minutes_ago * 60)
}

fn connect(protocol: Protocol) -> Event {
    Event::Connect(Connect {
        listener: protocol.as_str().to_owned(),
        protocol,
        client: "192.0.2.1:40000".parse::<SocketAddr>().unwrap(),
        tls: None,
        sni: None,
    })
}

fn auth(user: &str, reason: Reason) -> Event {
    Event::Auth(Auth {
        user: Some(user.to_owned()),
        ou: Some("/".to_owned()),
        mechanism: Mechanism::Plain,
        client_id: None,
        issuer: None,
        reason,
        policy_source: Some("ou:/".to_owned()),
        upstream: Some("up".to_owned()),
        client_name: None,
        would_deny: None,
        mailbox: None,
        grant: None,
    })
}

fn end() -> Event {
    Event::SessionEnd(SessionEnd {
        bytes_up: 1,
        bytes_down: 2,
        duration_ms: 3,
        end: End::ClientClosed,
    })
}

/// Sessions: `a` imap alice ok (2 h ago); `b` pop3 bob pop_disabled; `c` imap alice
/// invalid_token then ok; `d` imap carol, connect only (still live); then a reload.
fn fixture() -> tempfile::NamedTempFile {
    let records = [
        (120, Some("session-a"), connect(Protocol::Imap)),
        (120, Some("session-a"), auth("alice", Reason::Ok)),
        (119, Some("session-a"), end()),
        (5, Some("session-b"), connect(Protocol::Pop3)),
        (5, Some("session-b"), auth("bob", Reason::PopDisabled)),
        (5, Some("session-b"), end()),
        (4, Some("session-c"), connect(Protocol::Imap)),
        (4, Some("session-c"), auth("alice", Reason::InvalidToken)),
        (4, Some("session-c"), auth("alice", Reason::Ok)),
        (3, Some("session-c"), end()),
        (2, Some("session-d"), connect(Protocol::Imap)),
        (
            1,
            None,
            Event::Reload(Reload {
                outcome: ReloadOutcome::Applied,
                config_digest: Some("d1".to_owned()),
                source: Default::default(),
                changes: None,
            }),
        ),
    ];
    let mut out = Vec::new();
    for (ago, session, event) in records {
        Record {
            ts: at(ago),
            session: session.map(str::to_owned),
            event,
        }
        .write_json(&mut out)
        .unwrap();
    }
    out.extend_from_slice(b"not json\n\n");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&out).unwrap();
    file
}

/// (event, session) of every record shown with `filter`, plus the summary.
fn shown(filter: Filter) -> (Vec<(String, String)>, Summary) {
    let file = fixture();
    let options = Options {
        file: file.path().to_owned(),
        follow: false,
        filter,
        format: Format::Json,
        poll: POLL,
    };
    let mut out = Vec::new();
    let summary = run(&options, &mut out).unwrap();
    let rows = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let session = v["session"].as_str().unwrap_or("-");
            let tag = match v["event"].as_str().unwrap() {
                "auth" => format!("auth:{}", v["reason"].as_str().unwrap()),
                e => e.to_owned(),
            };
            (tag, session.trim_start_matches("session-").to_owned())
        })
        .collect();
    (rows, summary)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn no_filter_shows_everything_and_counts_malformed_lines() {
    let (rows, summary) = shown(Filter::default());
    assert_eq!(rows.len(), 12);
    assert_eq!(
        summary,
        Summary {
            shown: 12,
            malformed: 1
        }
    );
}

#[test]
fn user_filter_shows_whole_sessions() {
    let (rows, _) = shown(Filter {
        user: Some("alice".to_owned()),
        ..Filter::default()
    });
    assert_eq!(
        rows,
        pairs(&[
            ("connect", "a"),
            ("auth:ok", "a"),
            ("session_end", "a"),
            ("connect", "c"),
            ("auth:invalid_token", "c"),
            ("auth:ok", "c"),
            ("session_end", "c"),
        ])
    );
}

#[test]
fn decision_and_reason_select_auth_records() {
    let (rows, _) = shown(Filter {
        decision: Some(Verdict::Deny),
        ..Filter::default()
    });
    assert_eq!(
        rows,
        pairs(&[
            ("connect", "b"),
            ("auth:pop_disabled", "b"),
            ("session_end", "b"),
            ("connect", "c"),
            ("auth:invalid_token", "c"),
            ("session_end", "c"),
        ])
    );
    let (rows, _) = shown(Filter {
        reason: Some("pop_disabled".to_owned()),
        user: Some("alice".to_owned()),
        ..Filter::default()
    });
    assert!(rows.is_empty(), "AND: {rows:?}");
}

#[test]
fn protocol_selects_sessions_by_their_connect() {
    let (rows, _) = shown(Filter {
        protocol: Some(Protocol::Pop3),
        ..Filter::default()
    });
    assert_eq!(
        rows,
        pairs(&[
            ("connect", "b"),
            ("auth:pop_disabled", "b"),
            ("session_end", "b")
        ])
    );
    let (rows, _) = shown(Filter {
        protocol: Some(Protocol::Imap),
        ..Filter::default()
    });
    assert_eq!(rows.len(), 8, "a, c and the live d; no reload: {rows:?}");
}

#[test]
fn since_and_session_apply_to_each_record() {
    let (rows, _) = shown(Filter {
        since: Some(at(10)),
        ..Filter::default()
    });
    assert_eq!(rows.len(), 9, "session a is two hours old: {rows:?}");
    let (rows, _) = shown(Filter {
        session: Some("ion-c".to_owned()),
        ..Filter::default()
    });
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|(_, s)| s == "c"));
}

#[test]
fn table_is_aligned_and_escapes_control_characters() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut bytes = Vec::new();
    for (session, event) in [
        (
            "0193aaaa-bbbb-7ccc-8ddd-0123456789ab",
            connect(Protocol::Imap),
        ),
        (
            "0193aaaa-bbbb-7ccc-8ddd-0123456789ab",
            auth("evil\u{1b}[2Jname", Reason::Suspended),
        ),
    ] {
        Record::now(Some(session), event)
            .write_json(&mut bytes)
            .unwrap();
    }
    file.write_all(&bytes).unwrap();
    let options = Options {
        file: file.path().to_owned(),
        follow: false,
        filter: Filter::default(),
        format: Format::Table,
        poll: POLL,
    };
    let mut out = Vec::new();
    run(&options, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("evil\\u{1b}[2Jname"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("TIME "), "{text}");
    // The session column shows the 12-character ref, aligned under its header.
    let col = lines[0].find("SESSION").unwrap();
    assert_eq!(&lines[1][col..col + 12], "0123456789ab", "{text}");
    assert_eq!(&lines[2][col..col + 12], "0123456789ab", "{text}");
    assert!(
        lines[2].contains("suspended") && lines[2].contains("deny"),
        "{text}"
    );
    assert!(lines[1].contains("client=192.0.2.1:40000"), "{text}");
}

/// A user name with a right-to-left override, a line separator and invisible characters: the
/// table shows each as a visible escape, `--json` writes them as JSON escapes, even when the
/// file holds them raw (written by an older mailgate), and the JSON still means the same.
#[test]
fn bidi_controls_and_line_separators_are_escaped_in_table_and_json() {
    let user = "ev\u{202e}lin\u{2028}x\u{2029}\u{200b}\u{feff}\u{2066}\u{85}@example.com";
    let raw = format!(
        "{{\"ts\":\"2026-11-25T17:02:28.123Z\",\"event\":\"auth\",\"session\":\"s1\",\
         \"user\":\"{user}\",\"decision\":\"deny\",\"reason\":\"suspended\"}}\n"
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(raw.as_bytes()).unwrap();
    let render = |format| {
        let options = Options {
            file: file.path().to_owned(),
            follow: false,
            filter: Filter::default(),
            format,
            poll: POLL,
        };
        let mut out = Vec::new();
        run(&options, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let hidden = [
        '\u{202e}', '\u{2028}', '\u{2029}', '\u{200b}', '\u{feff}', '\u{2066}', '\u{85}',
    ];

    let table = render(Format::Table);
    for c in hidden {
        assert!(
            !table.contains(c),
            "raw U+{:04X} in {table:?}",
            u32::from(c)
        );
    }
    assert!(
        table.contains(r"ev\u{202e}lin\u{2028}x\u{2029}\u{200b}\u{feff}\u{2066}\u{85}@example.com"),
        "{table}"
    );

    let json = render(Format::Json);
    for c in hidden {
        assert!(!json.contains(c), "raw U+{:04X} in {json:?}", u32::from(c));
    }
    assert_eq!(json.lines().count(), 1, "{json:?}");
    assert!(
        json.contains(r"ev\u202elin\u2028x\u2029\u200b\ufeff\u2066\u0085@example.com"),
        "{json}"
    );
    let back: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["user"], user);
}

#[test]
fn since_accepts_durations_days_and_timestamps() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    assert_eq!(
        parse_since("10m", now).unwrap(),
        now - Duration::from_secs(600)
    );
    assert_eq!(
        parse_since("2d", now).unwrap(),
        now - Duration::from_secs(172_800)
    );
    assert_eq!(
        parse_since("1970-01-01T00:00:10Z", now).unwrap(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(10)
    );
    assert_eq!(
        parse_since("1970-01-01T01:00:10+01:00", now).unwrap(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(10)
    );
    assert!(parse_since("soon", now).is_err());
    assert!(parse_since("d", now).is_err());
    assert!(parse_since("9999h", now).unwrap() <= SystemTime::UNIX_EPOCH);
}
