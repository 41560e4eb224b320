//! Schema tests: every event, every reason code and every end value, serialized and read back
//! as JSON, with the exact key set and value types of docs/audit.md.

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Type {
    Str,
    StrOrNull,
    U64,
}

fn check(value: &Value, ty: Type) -> bool {
    match ty {
        Type::Str => value.is_string(),
        Type::StrOrNull => value.is_string() || value.is_null(),
        Type::U64 => value.is_u64(),
    }
}

/// The documented key set (docs/audit.md) of each event, after `ts`, `event` and `session`.
fn schema(event: &str) -> &'static [(&'static str, Type)] {
    use Type::*;
    match event {
        "connect" => &[
            ("listener", Str),
            ("protocol", Str),
            ("client", Str),
            ("tls", StrOrNull),
            ("sni", StrOrNull),
        ],
        "auth" => &[
            ("user", StrOrNull),
            ("ou", StrOrNull),
            ("mechanism", Str),
            ("client_id", StrOrNull),
            ("client_name", StrOrNull),
            ("issuer", StrOrNull),
            ("decision", Str),
            ("reason", Str),
            ("policy_source", StrOrNull),
            ("upstream", StrOrNull),
        ],
        "session_end" => &[
            ("bytes_up", U64),
            ("bytes_down", U64),
            ("duration_ms", U64),
            ("end", Str),
        ],
        "reload" => &[
            ("result", Str),
            ("error", StrOrNull),
            ("config_digest", StrOrNull),
            ("source", Str),
            ("changes", StrOrNull),
        ],
        other => panic!("no schema for {other}"),
    }
}

/// `2026-11-25T17:02:28.123Z`, checked by hand: no regex crate for one pattern.
fn is_audit_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// Serializes, parses back, checks the key set, order of the head and value types.
fn round_trip(record: &Record) -> serde_json::Map<String, Value> {
    let mut bytes = Vec::new();
    record.write_json(&mut bytes).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'));
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with("{\"ts\":\""),
        "ts comes first for sorting: {text}"
    );
    let Value::Object(map) = serde_json::from_slice::<Value>(&bytes).unwrap() else {
        panic!("not an object: {text}")
    };
    let event = map["event"].as_str().unwrap().to_owned();
    assert_eq!(event, record.event.name());
    let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    let mut want: BTreeSet<&str> = ["ts", "event", "session"].into();
    for (key, ty) in schema(&event) {
        want.insert(key);
        assert!(check(&map[*key], *ty), "{event}.{key}: {:?}", map[*key]);
    }
    assert_eq!(keys, want, "{text}");
    assert!(is_audit_ts(map["ts"].as_str().unwrap()), "{text}");
    match &record.session {
        Some(s) => assert_eq!(map["session"], Value::String(s.clone())),
        None => assert_eq!(map["session"], Value::Null),
    }
    assert_eq!(record.to_json().unwrap(), text.trim_end());
    map
}

fn connect() -> Connect {
    Connect {
        listener: "imaps".to_owned(),
        protocol: Protocol::Imap,
        client: "192.0.2.7:50123".parse().unwrap(),
        tls: Some(TlsVersion::Tls13),
        sni: Some("mail.example.com".to_owned()),
    }
}

fn auth(reason: Reason, mechanism: Mechanism) -> Auth {
    Auth {
        user: Some("alice@example.com".to_owned()),
        ou: Some("/Sales".to_owned()),
        mechanism,
        client_id: Some("1234.apps.example.com".to_owned()),
        issuer: Some("https://idp.example.com".to_owned()),
        reason,
        policy_source: Some("ou:/Sales".to_owned()),
        upstream: Some("dovecot-imap".to_owned()),
        client_name: None,
        would_deny: None,
        mailbox: None,
        grant: None,
    }
}

fn rec(session: Option<&str>, event: Event) -> Record {
    Record::now(session, event)
}

#[test]
fn reasons_list_is_complete() {
    // Adding a Reason variant breaks this match: add it to REASONS too.
    fn index(r: Reason) -> usize {
        match r {
            Reason::Ok => 0,
            Reason::UnknownUser => 1,
            Reason::Suspended => 2,
            Reason::ImapDisabled => 3,
            Reason::PopDisabled => 4,
            Reason::PasswordLoginDisabled => 5,
            Reason::ClientNotAllowed => 6,
            Reason::InvalidToken => 7,
            Reason::TokenUserMismatch => 8,
            Reason::DelegationNotSupported => 9,
            Reason::UpstreamRejected => 10,
            Reason::UpstreamUnavailable => 11,
            Reason::IdpUnavailable => 12,
            Reason::MailboxNotAssigned => 13,
            Reason::GrantUnavailable => 14,
            Reason::RateLimited => 15,
            Reason::ClientClosed => 16,
        }
    }
    for (i, r) in REASONS.iter().enumerate() {
        assert_eq!(index(*r), i);
    }
}

#[test]
fn connect_schema() {
    let m = round_trip(&rec(Some("0193a0b1c2d3"), Event::Connect(connect())));
    assert_eq!(m["event"], "connect");
    assert_eq!(m["protocol"], "imap");
    assert_eq!(m["client"], "192.0.2.7:50123");
    assert_eq!(m["tls"], "TLSv1.3");
    assert_eq!(m["sni"], "mail.example.com");

    let plain = Connect {
        protocol: Protocol::Pop3,
        client: "[2001:db8::1]:110".parse().unwrap(),
        tls: None,
        sni: None,
        ..connect()
    };
    let m = round_trip(&rec(Some("s"), Event::Connect(plain)));
    assert_eq!(m["protocol"], "pop3");
    assert_eq!(m["client"], "[2001:db8::1]:110");
    assert_eq!(m["tls"], Value::Null);
    let tls12 = Connect {
        tls: TlsVersion::from_rustls(rustls::ProtocolVersion::TLSv1_2),
        ..connect()
    };
    assert_eq!(
        round_trip(&rec(Some("s"), Event::Connect(tls12)))["tls"],
        "TLSv1.2"
    );
}

#[test]
fn auth_schema_for_every_reason_and_mechanism() {
    let mechanisms = [
        Mechanism::ImapLogin,
        Mechanism::UserPass,
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::XOAuth2,
        Mechanism::OAuthBearer,
    ];
    for reason in REASONS {
        for mechanism in mechanisms {
            let m = round_trip(&rec(Some("s1"), Event::Auth(auth(reason, mechanism))));
            assert_eq!(m["reason"], reason.as_str());
            assert_eq!(m["mechanism"], mechanism.as_str());
            let want = if reason == Reason::Ok {
                "allow"
            } else {
                "deny"
            };
            assert_eq!(m["decision"], want, "{reason:?}");
        }
    }
    // Unknown values are null, never missing.
    let bare = Auth {
        user: None,
        ou: None,
        mechanism: Mechanism::XOAuth2,
        client_id: None,
        issuer: None,
        reason: Reason::InvalidToken,
        policy_source: None,
        upstream: None,
        client_name: None,
        would_deny: None,
        mailbox: None,
        grant: None,
    };
    let m = round_trip(&rec(Some("s2"), Event::Auth(bare)));
    assert_eq!(m["user"], Value::Null);
    assert_eq!(m["decision"], "deny");
}

#[test]
fn session_end_schema_for_every_end() {
    for end in End::ALL {
        let m = round_trip(&rec(
            Some("s3"),
            Event::SessionEnd(SessionEnd {
                bytes_up: 10,
                bytes_down: u64::MAX,
                duration_ms: 1234,
                end,
            }),
        ));
        assert_eq!(m["end"], end.as_str());
        assert_eq!(m["bytes_down"].as_u64(), Some(u64::MAX));
    }
    let from_splice = [
        (crate::splice::End::DownstreamClosed, End::ClientClosed),
        (crate::splice::End::UpstreamClosed, End::UpstreamClosed),
        (crate::splice::End::IdleTimeout, End::IdleTimeout),
        (crate::splice::End::Revoked, End::Revoked),
        (crate::splice::End::Shutdown, End::Shutdown),
    ];
    for (splice, audit) in from_splice {
        assert_eq!(End::from(splice), audit);
        assert_eq!(End::from(splice).as_str(), splice.as_str());
    }
}

#[test]
fn reload_schema() {
    let ok = Reload {
        outcome: ReloadOutcome::Applied,
        config_digest: Some("sha256:abc".to_owned()),
        source: Default::default(),
        changes: None,
    };
    let m = round_trip(&rec(None, Event::Reload(ok)));
    assert_eq!(m["result"], "ok");
    assert_eq!(m["error"], Value::Null);
    assert_eq!(m["session"], Value::Null);
    let rejected = Reload {
        outcome: ReloadOutcome::Rejected {
            error: "listener[0].bind: \"x\"\nsecond line".to_owned(),
        },
        config_digest: None,
        source: Default::default(),
        changes: None,
    };
    let m = round_trip(&rec(None, Event::Reload(rejected)));
    assert_eq!(m["result"], "rejected");
    assert_eq!(m["error"], "listener[0].bind: \"x\"\nsecond line");
    assert_eq!(m["config_digest"], Value::Null);
}

#[test]
fn timestamps_are_utc_with_milliseconds() {
    let at = UNIX_EPOCH + Duration::from_millis(1_795_626_148_123) + Duration::from_micros(999);
    assert_eq!(format_ts(at), "2026-11-25T17:02:28.123Z");
    assert_eq!(format_ts(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert!(is_audit_ts(&format_ts(SystemTime::now())));
    let record = Record {
        ts: at,
        session: Some("x".to_owned()),
        event: Event::Connect(connect()),
    };
    assert!(
        record
            .to_json()
            .unwrap()
            .starts_with(r#"{"ts":"2026-11-25T17:02:28.123Z","event":"connect","session":"x","#)
    );
}

#[test]
fn hostile_strings_stay_inside_their_field() {
    let evil = Auth {
        user: Some("a\"}\n{\"event\":\"auth\",\"decision\":\"allow\u{1b}[2J".to_owned()),
        ..auth(Reason::Suspended, Mechanism::ImapLogin)
    };
    let m = round_trip(&rec(Some("s"), Event::Auth(evil.clone())));
    assert_eq!(m["user"].as_str(), evil.user.as_deref());
    assert_eq!(m["decision"], "deny");
}

/// Bidi overrides and isolates, zero-width characters, line and paragraph separators, the BOM,
/// DEL and C1 controls: none is written raw (issue 9: a U+202E in a user name turned the
/// operator's terminal line around; U+2028 ends a line for some JSONL readers), and the record
/// still reads back as the very name the client sent.
#[test]
fn invisible_and_line_breaking_characters_are_escaped() {
    let hidden: String = [
        '\u{7f}', '\u{85}', '\u{9b}', '\u{61c}', '\u{200b}', '\u{200e}', '\u{200f}', '\u{2028}',
        '\u{2029}', '\u{202a}', '\u{202e}', '\u{2060}', '\u{2066}', '\u{2069}', '\u{feff}',
    ]
    .into_iter()
    .collect();
    let user = format!("mallory{hidden}@example.com");
    let record = rec(
        Some("s"),
        Event::Auth(Auth {
            user: Some(user.clone()),
            ..auth(Reason::Suspended, Mechanism::ImapLogin)
        }),
    );
    let json = record.to_json().unwrap();
    for c in hidden.chars() {
        assert!(!json.contains(c), "raw U+{:04X} in {json:?}", u32::from(c));
    }
    assert!(
        json.contains(r#""user":"mallory\u007f\u0085\u009b\u061c\u200b\u200e\u200f\u2028\u2029\u202a\u202e\u2060\u2066\u2069\ufeff@example.com""#),
        "{json}"
    );
    assert_eq!(round_trip(&record)["user"].as_str(), Some(user.as_str()));
    // Ordinary non-ASCII stays as it is: only what hides or breaks lines is escaped.
    let plain = rec(
        Some("s"),
        Event::Auth(Auth {
            user: Some("jürgen@bücher.example".to_owned()),
            ..auth(Reason::Ok, Mechanism::ImapLogin)
        }),
    );
    assert!(plain.to_json().unwrap().contains("jürgen@bücher.example"));
}
