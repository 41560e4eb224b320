//! Tests for loading and validation. Each validation error is checked for its key path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailgate.toml")
}

/// A minimal valid config; tests append or replace parts of it.
const BASE: &str = r#"
[[listener]]
name = "imaps"
protocol = "imap"
bind = "127.0.0.1:1993"
tls = "implicit"
upstream = "dovecot"

[[upstream]]
name = "dovecot"
protocol = "imap"
addresses = ["127.0.0.1:143"]
tls = "starttls"

[tls]
cert_file = "cert.pem"
key_file = "key.pem"
"#;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, Path::new("/etc/mailgate"))
}

/// Loads `text`, expecting failure, and returns every error line.
fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(c) => panic!("expected errors, loaded {c:#?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts that exactly one error was reported and that it starts with `path` and contains
/// `needle`.
#[track_caller]
fn assert_one(text: &str, path: &str, needle: &str) {
    let all = errors(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with(&format!("{path}: ")),
        "want path {path}: {all:#?}"
    );
    assert!(all[0].contains(needle), "want {needle:?}: {all:#?}");
}

#[test]
fn shipped_config_loads() {
    let c = Config::load(&shipped()).unwrap();
    let dir = shipped().parent().unwrap().to_owned();
    let names: Vec<_> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["imaps", "imap", "pop3s", "pop3"]);
    assert!(c.listeners.iter().all(|l| l.bind.ip().is_loopback()));
    assert_eq!(c.upstreams.len(), 2);
    for l in &c.listeners {
        assert_eq!(c.upstream_for(l).unwrap().protocol, l.protocol);
    }
    let imap = &c.upstreams["dovecot-imap"];
    assert_eq!(imap.tls, UpstreamTls::StartTls);
    assert_eq!(imap.server_name, "localhost");
    assert_eq!(
        imap.ca_file.as_deref(),
        Some(dir.join("../certs/ca.pem").as_path())
    );
    assert!(
        imap.ca_file.as_ref().unwrap().is_file(),
        "shipped ca_file must exist"
    );
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, dir.join("../certs/dev/mailgate.pem"));
    assert!(tls.generate_self_signed);
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(
        c.limits,
        Limits::default(),
        "the example shows the defaults"
    );
    assert_eq!(c.log, Log::default());
    assert_eq!(
        c.audit,
        AuditConfig {
            sink: AuditSink::File(dir.join("../run/audit.log")),
            queue: DEFAULT_AUDIT_QUEUE,
        }
    );
}

/// Every `*.toml` in `config/` that is a mailgate config loads as shipped. (`directory.toml` has
/// its own schema and its own test in the directory module.)
#[test]
fn every_shipped_mailgate_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("mailgate") && name.ends_with(".toml") {
            if let Err(e) = Config::load(&path) {
                panic!("{name}:\n{e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

/// hickory-dns `test_reject_unknown_fields`: an unknown key added to any table of the shipped
/// file is an error naming that table.
#[test]
fn shipped_config_rejects_unknown_key_in_every_table() {
    let text = std::fs::read_to_string(shipped()).unwrap();
    let base = shipped().parent().unwrap().to_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut tried = Vec::new();
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    // The root table first: a key before the first header.
    let mut cases = vec![(0, "unknown_key_x".to_owned())];
    for (i, line) in lines.iter().enumerate() {
        let header = line.trim();
        let path = if let Some(t) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            let n = counts.entry(t).or_default();
            *n += 1;
            format!("{t}[{}]", *n - 1)
        } else if let Some(t) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            t.to_owned()
        } else {
            continue;
        };
        cases.push((i + 1, path));
    }
    for (at, path) in cases {
        let mut edited: Vec<&str> = lines.clone();
        edited.insert(at, "unknown_key_x = 1");
        let e = Config::from_toml(&edited.join("\n"), &base).unwrap_err();
        let all = e.to_string();
        assert_eq!(e.0.len(), 1, "{path}: {all}");
        assert!(
            all.starts_with(&format!("{path}: unknown ")),
            "{path}: {all}"
        );
        assert!(all.contains("unknown_key_x"), "{path}: {all}");
        tried.push(path);
    }
    for want in [
        "unknown_key_x",
        "listener[3]",
        "upstream[1]",
        "tls",
        "limits",
        "log",
        "admin",
        "audit",
    ] {
        assert!(
            tried.iter().any(|t| t == want),
            "{want} not covered: {tried:?}"
        );
    }
}

#[test]
fn base_loads_with_defaults() {
    let c = load(BASE).unwrap();
    let up = &c.upstreams["dovecot"];
    assert_eq!(
        up.server_name, "127.0.0.1",
        "default: host of the first address"
    );
    assert!(up.verify_certificate);
    assert_eq!(up.ca_file, None);
    assert_eq!(up.connect_timeout, Duration::from_secs(5));
    assert_eq!(up.login_timeout, Duration::from_secs(30));
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert_file, Path::new("/etc/mailgate/cert.pem"));
    assert!(!tls.generate_self_signed);
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(1800));
    assert_eq!(c.limits.send_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.preauth, crate::proto::PreauthLimits::default());
    assert_eq!(c.log.filter, "info");
}

#[test]
fn absolute_paths_are_kept() {
    let text = BASE.replace("\"cert.pem\"", "\"/srv/tls/cert.pem\"");
    let c = load(&text).unwrap();
    assert_eq!(c.tls.unwrap().cert_file, Path::new("/srv/tls/cert.pem"));
}

#[test]
fn load_uses_the_files_directory_and_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, BASE).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.tls.unwrap().key_file, dir.path().join("key.pem"));

    let missing = dir.path().join("nope.toml");
    let e = Config::load(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with("cannot read ") && e.contains("nope.toml"),
        "{e}"
    );
}

#[test]
fn all_keys_are_read() {
    let text = r#"
[[listener]]
name = "p"
protocol = "pop3"
bind = "[::1]:1110"
tls = "none"
upstream = "u"
[[upstream]]
name = "u"
protocol = "pop3"
addresses = ["mail.example.com:995", "[::1]:995"]
tls = "implicit"
server_name = "10.1.2.3"
ca_file = "ca.pem"
verify_certificate = false
connect_timeout = "500ms"
login_timeout = "1m"
[tls]
cert_file = "c"
key_file = "k"
generate_self_signed = true
min_version = "1.3"
[limits]
max_line = 512
max_literal = 255
max_auth_attempts = 1
max_username = 100
auth_timeout = "10s"
idle_timeout = "1h"
send_timeout = "15s"
max_connections = 1
[log]
filter = "warn,mailgate=debug"
"#;
    let c = load(text).unwrap();
    assert_eq!(c.listeners[0].bind, "[::1]:1110".parse().unwrap());
    assert_eq!(c.listeners[0].tls, ListenerTls::None);
    let up = &c.upstreams["u"];
    assert_eq!(up.addresses.len(), 2);
    assert_eq!(up.tls, UpstreamTls::Implicit);
    assert_eq!(up.server_name, "10.1.2.3");
    assert_eq!(
        up.ca_file.as_deref(),
        Some(Path::new("/etc/mailgate/ca.pem"))
    );
    assert!(!up.verify_certificate);
    assert_eq!(up.connect_timeout, Duration::from_millis(500));
    assert_eq!(up.login_timeout, Duration::from_secs(60));
    let tls = c.tls.as_ref().unwrap();
    assert!(tls.generate_self_signed);
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    let p = c.limits.preauth;
    assert_eq!((p.max_line, p.max_literal, p.max_attempts), (512, 255, 1));
    assert_eq!(p.max_username, 100);
    assert_eq!(p.auth_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(3600));
    assert_eq!(c.limits.send_timeout, Duration::from_secs(15));
    assert_eq!(c.limits.max_connections, 1);
    assert_eq!(c.log.filter, "warn,mailgate=debug");
    let w = c.warnings().join("\n");
    assert!(w.contains("listener[0].tls: plaintext"), "{w}");
    assert!(
        w.contains("upstream \"u\".verify_certificate: false"),
        "{w}"
    );
    assert!(w.contains("tls.generate_self_signed"), "{w}");
    assert!(w.contains("upstream \"u\".ca_file: ignored"), "{w}");
}

#[test]
fn tls_table_optional_when_all_listeners_are_plaintext() {
    let text = BASE
        .replace("tls = \"implicit\"", "tls = \"none\"")
        .replace(
            "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n",
            "",
        );
    let c = load(&text).unwrap();
    assert!(c.tls.is_none());
}

// --- Each validation error, with its key path. ---

#[test]
fn syntax_error() {
    let all = errors("[[listener]\n");
    assert_eq!(all.len(), 1);
    assert!(all[0].starts_with("line 1, column "), "{all:?}");
}

#[test]
fn unknown_key_in_listener() {
    let text = BASE.replace("upstream = \"dovecot\"", "upstream = \"dovecot\"\nport = 1");
    assert_one(&text, "listener[0]", "unknown field `port`");
}

#[test]
fn wrong_type_names_the_key() {
    let text = BASE.replace("\"127.0.0.1:1993\"", "1993");
    assert_one(&text, "listener[0].bind", "invalid type");
}

#[test]
fn unknown_enum_value() {
    let text = BASE.replace("tls = \"implicit\"", "tls = \"ssl\"");
    assert_one(&text, "listener[0].tls", "unknown variant `ssl`");
    let text = BASE.replace("[tls]", "[tls]\nmin_version = \"1.1\"");
    assert_one(&text, "tls.min_version", "unknown variant `1.1`");
}

#[test]
fn missing_required_key() {
    let text = BASE.replace("protocol = \"imap\"\nbind", "bind");
    assert_one(&text, "listener[0]", "missing field `protocol`");
}

#[test]
fn no_listener() {
    let text = BASE.replace(
        "[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:1993\"\ntls = \
         \"implicit\"\nupstream = \"dovecot\"\n",
        "",
    );
    assert_one(&text, "listener", "at least one");
}

#[test]
fn duplicate_listener_name() {
    let text = format!(
        "{BASE}\n[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nbind = \
         \"127.0.0.1:2993\"\ntls = \"implicit\"\nupstream = \"dovecot\"\n"
    );
    assert_one(
        &text,
        "listener[1].name",
        "duplicate listener name \"imaps\"",
    );
}

#[test]
fn invalid_name() {
    let text = BASE.replace("name = \"imaps\"", "name = \"imap s\"");
    assert_one(&text, "listener[0].name", "not a valid name");
    let text = BASE.replace("name = \"imaps\"", "name = \"\"");
    assert_one(&text, "listener[0].name", "not a valid name");
}

#[test]
fn duplicate_upstream_name() {
    let text = format!(
        "{BASE}\n[[upstream]]\nname = \"dovecot\"\nprotocol = \"imap\"\naddresses = \
         [\"127.0.0.1:993\"]\ntls = \"implicit\"\n"
    );
    assert_one(
        &text,
        "upstream[1].name",
        "duplicate upstream name \"dovecot\"",
    );
}

#[test]
fn listener_upstream_missing() {
    let text = BASE.replace("upstream = \"dovecot\"", "upstream = \"dovecat\"");
    assert_one(
        &text,
        "listener[0].upstream",
        "no [[upstream]] named \"dovecat\"",
    );
}

#[test]
fn listener_upstream_wrong_protocol() {
    let text = BASE.replacen("protocol = \"imap\"", "protocol = \"pop3\"", 1);
    assert_one(
        &text,
        "listener[0].upstream",
        "speaks imap, but this listener speaks pop3",
    );
}

#[test]
fn broken_upstream_does_not_cause_a_second_error_on_the_listener() {
    let text = BASE.replace("tls = \"starttls\"", "tls = \"starttls\"\nretries = 3");
    assert_one(&text, "upstream[0]", "unknown field `retries`");
}

#[test]
fn plaintext_listener_off_loopback() {
    for bind in [
        "0.0.0.0:143",
        "192.0.2.1:143",
        "[::]:143",
        "[::ffff:192.0.2.1]:143",
    ] {
        let text = BASE
            .replace("tls = \"implicit\"", "tls = \"none\"")
            .replace("127.0.0.1:1993", bind);
        assert_one(&text, "listener[0].bind", "is not a loopback address");
    }
    for bind in ["127.0.0.2:143", "[::1]:143", "[::ffff:127.0.0.1]:143"] {
        let text = BASE
            .replace("tls = \"implicit\"", "tls = \"none\"")
            .replace("127.0.0.1:1993", bind);
        load(&text).unwrap();
    }
    // TLS listeners may bind anywhere.
    load(&BASE.replace("127.0.0.1:1993", "0.0.0.0:993")).unwrap();
}

#[test]
fn bind_not_an_address() {
    for bind in ["localhost:993", "127.0.0.1", "127.0.0.1:99999"] {
        let text = BASE.replace("127.0.0.1:1993", bind);
        assert_one(&text, "listener[0].bind", "is not an IP address and port");
    }
}

#[test]
fn duplicate_bind() {
    let text = format!(
        "{BASE}\n[[listener]]\nname = \"imaps2\"\nprotocol = \"imap\"\nbind = \
         \"0.0.0.0:1993\"\ntls = \"implicit\"\nupstream = \"dovecot\"\n"
    );
    assert_one(
        &text,
        "listener[1].bind",
        "conflicts with listener[0] \"imaps\"",
    );
}

#[test]
fn port_zero_binds_do_not_conflict() {
    let text = format!(
        "{BASE}\n[[listener]]\nname = \"imaps2\"\nprotocol = \"imap\"\nbind = \
         \"127.0.0.1:0\"\ntls = \"implicit\"\nupstream = \"dovecot\"\n"
    )
    .replace("127.0.0.1:1993", "127.0.0.1:0");
    load(&text).unwrap();
}

#[test]
fn tls_required_for_tls_listeners() {
    let text = BASE.replace(
        "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n",
        "",
    );
    assert_one(&text, "tls", "missing [tls] table");
}

#[test]
fn tls_files() {
    let text = BASE.replace("\"key.pem\"", "\"cert.pem\"");
    assert_one(&text, "tls.key_file", "must differ");
    let text = BASE.replace("\"key.pem\"", "\"\"");
    assert_one(&text, "tls.key_file", "must not be empty");
}

#[test]
fn upstream_addresses() {
    let text = BASE.replace("[\"127.0.0.1:143\"]", "[]");
    assert_one(&text, "upstream \"dovecot\".addresses", "at least one");
    let text = BASE.replace(
        "[\"127.0.0.1:143\"]",
        "[\"127.0.0.1:143\", \"mail.example.com\"]",
    );
    assert_one(
        &text,
        "upstream \"dovecot\".addresses[1]",
        "missing \":port\"",
    );
    let text = BASE.replace("[\"127.0.0.1:143\"]", "[\"::1:143\"]");
    assert_one(&text, "upstream \"dovecot\".addresses[0]", "need brackets");
}

#[test]
fn upstream_server_name() {
    let text = BASE.replace(
        "tls = \"starttls\"",
        "tls = \"starttls\"\nserver_name = \"a b\"",
    );
    assert_one(
        &text,
        "upstream \"dovecot\".server_name",
        "neither a DNS name",
    );
}

#[test]
fn upstream_bad_duration() {
    let text = BASE.replace(
        "tls = \"starttls\"",
        "tls = \"starttls\"\nconnect_timeout = \"5 minutes\"",
    );
    assert_one(
        &text,
        "upstream \"dovecot\".connect_timeout",
        "invalid duration \"5 minutes\"",
    );
    let text = BASE.replace(
        "tls = \"starttls\"",
        "tls = \"starttls\"\nlogin_timeout = \"0s\"",
    );
    assert_one(
        &text,
        "upstream \"dovecot\".login_timeout",
        "must be greater than zero",
    );
}

#[test]
fn limits_out_of_range() {
    let cases = [
        ("max_line = 100", "limits.max_line"),
        ("max_line = 2000000", "limits.max_line"),
        ("max_literal = 10", "limits.max_literal"),
        ("max_username = 10", "limits.max_username"),
        ("max_username = 100000", "limits.max_username"),
        ("max_auth_attempts = 0", "limits.max_auth_attempts"),
        ("max_auth_attempts = 1000", "limits.max_auth_attempts"),
        ("max_connections = 0", "limits.max_connections"),
        ("max_handshakes = 2000000", "limits.max_handshakes"),
        (
            "max_handshakes_per_ip = 2000000",
            "limits.max_handshakes_per_ip",
        ),
        ("backlog = 8", "limits.backlog"),
        ("backlog = 70000", "limits.backlog"),
    ];
    for (line, path) in cases {
        assert_one(&format!("{BASE}\n[limits]\n{line}\n"), path, "out of range");
    }
    assert_one(
        &format!("{BASE}\n[limits]\nmax_line = -1\n"),
        "limits.max_line",
        "invalid",
    );
}

#[test]
fn limits_bad_durations() {
    assert_one(
        &format!("{BASE}\n[limits]\nauth_timeout = \"soon\"\n"),
        "limits.auth_timeout",
        "invalid duration \"soon\"",
    );
    assert_one(
        &format!("{BASE}\n[limits]\nidle_timeout = \"0m\"\n"),
        "limits.idle_timeout",
        "must be greater than zero",
    );
    assert_one(
        &format!("{BASE}\n[limits]\nhandshake_timeout = \"0s\"\n"),
        "limits.handshake_timeout",
        "must be greater than zero",
    );
}

#[test]
fn accept_limits_defaults_and_values() {
    let accept = |text: &str| {
        let l = load(text).unwrap().limits;
        let c = l.connections;
        (
            c.connections_per_ip,
            c.handshakes,
            c.handshakes_per_ip,
            l.handshake_timeout.as_secs(),
            l.backlog,
        )
    };
    assert_eq!(accept(BASE), (100, 1000, 20, 10, 4096));
    let set = format!(
        "{BASE}\n[limits]\nmax_connections_per_ip = 0\nmax_handshakes = 5\n\
         max_handshakes_per_ip = 2\nhandshake_timeout = \"3s\"\nbacklog = 512\n"
    );
    assert_eq!(accept(&set), (0, 5, 2, 3, 512));
}

#[test]
fn idle_timeout_below_rfc_minimum_is_a_warning() {
    let c = load(&format!("{BASE}\n[limits]\nidle_timeout = \"5m\"\n")).unwrap();
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("limits.idle_timeout:"))
    );
}

#[test]
fn log_filter_checked() {
    assert_one(
        &format!("{BASE}\n[log]\nfilter = \"info,[{{\"\n"),
        "log.filter",
        "invalid filter",
    );
}

#[test]
fn unknown_top_level_key() {
    assert_one(
        &format!("audits = 1\n{BASE}"),
        "audits",
        "unknown key `audits`",
    );
}

#[test]
fn all_problems_are_reported_together() {
    let text = format!(
        "{BASE}
[[listener]]
name = \"imaps\"
protocol = \"imap\"
bind = \"0.0.0.0:143\"
tls = \"none\"
upstream = \"nowhere\"

[[upstream]]
name = \"other\"
protocol = \"imap\"
addresses = [\"x\"]
tls = \"implicit\"
connect_timeout = \"5 minutes\"
colour = \"red\"

[limits]
max_line = 1
"
    );
    let all = errors(&text);
    let joined = all.join("\n");
    for want in [
        "upstream[1]: unknown field `colour`",
        "listener[1].name: duplicate listener name",
        "listener[1].bind: \"0.0.0.0:143\" is not a loopback address",
        "listener[1].upstream: no [[upstream]] named \"nowhere\"",
        "limits.max_line: 1 is out of range",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert_eq!(all.len(), 5, "{joined}");
    // Display puts one error per line.
    let e = load(&text).unwrap_err();
    assert_eq!(e.to_string().lines().count(), e.0.len());
}

#[test]
fn validation_errors_across_upstreams_are_all_reported() {
    let text = format!(
        "{BASE}
[[upstream]]
name = \"other\"
protocol = \"imap\"
addresses = [\"x\"]
tls = \"implicit\"
connect_timeout = \"5 minutes\"
"
    );
    let all = errors(&text).join("\n");
    assert!(
        all.contains("upstream \"other\".addresses[0]: \"x\": missing \":port\""),
        "{all}"
    );
    assert!(
        all.contains("upstream \"other\".connect_timeout: invalid duration \"5 minutes\""),
        "{all}"
    );
}

mod ldap;
mod ops;
#[test]
fn audit_absent_is_disabled_with_a_warning() {
    let c = load(BASE).unwrap();
    assert_eq!(c.audit, AuditConfig::default());
    assert_eq!(c.audit.sink, AuditSink::Disabled);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("audit: no [audit] table"))
    );
}

#[test]
fn audit_file_resolves_against_the_config_dir() {
    let c = load(&format!(
        "{BASE}\n[audit]\nfile = \"log/audit.log\"\nqueue = 10\n"
    ))
    .unwrap();
    assert_eq!(
        c.audit,
        AuditConfig {
            sink: AuditSink::File(PathBuf::from("/etc/mailgate/log/audit.log")),
            queue: 10,
        }
    );
    assert!(!c.warnings().iter().any(|w| w.starts_with("audit")));
    let c = load(&format!("{BASE}\n[audit]\nfile = \"/var/log/m/a.log\"\n")).unwrap();
    assert_eq!(
        c.audit.sink,
        AuditSink::File(PathBuf::from("/var/log/m/a.log"))
    );
    let c = load(&format!(
        "{BASE}\n[audit]\nfile = \"a.log\"\nstdout = false\n"
    ))
    .unwrap();
    assert_eq!(
        c.audit.sink,
        AuditSink::File(PathBuf::from("/etc/mailgate/a.log"))
    );
}

#[test]
fn audit_stdout() {
    let c = load(&format!("{BASE}\n[audit]\nstdout = true\n")).unwrap();
    assert_eq!(c.audit.sink, AuditSink::Stdout);
    assert_eq!(c.audit.queue, DEFAULT_AUDIT_QUEUE);
}

#[test]
fn audit_needs_exactly_one_sink() {
    assert_one(
        &format!("{BASE}\n[audit]\nfile = \"a\"\nstdout = true\n"),
        "audit",
        "not both",
    );
    assert_one(
        &format!("{BASE}\n[audit]\nqueue = 5\n"),
        "audit",
        "set `file",
    );
    assert_one(
        &format!("{BASE}\n[audit]\nstdout = false\n"),
        "audit",
        "set `file",
    );
    assert_one(
        &format!("{BASE}\n[audit]\nfile = \"\"\n"),
        "audit.file",
        "not a file path",
    );
}

#[test]
fn audit_queue_bounded() {
    assert_one(
        &format!("{BASE}\n[audit]\nstdout = true\nqueue = 0\n"),
        "audit.queue",
        "out of range",
    );
    assert_one(
        &format!("{BASE}\n[audit]\nstdout = true\nqueue = 100000000\n"),
        "audit.queue",
        "out of range",
    );
}

#[test]
fn audit_unknown_key_rejected() {
    assert_one(
        &format!("{BASE}\n[audit]\nstdout = true\nrotate = 1\n"),
        "audit",
        "unknown field `rotate`",
    );
}

// ---- [policy] and the directory ----------------------------------------------------------------

fn with_directory(
    policy: &str,
    directory: &str,
) -> (tempfile::TempDir, Result<Config, ConfigErrors>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dir.toml"), directory).unwrap();
    let result = Config::from_toml(&format!("{BASE}\n[policy]\n{policy}"), dir.path());
    (dir, result)
}

const SMALL_DIRECTORY: &str = r#"
[[ou]]
path = "/"
pop = true
imap = true
imap_clients = "all"
password_logins = false
[[ou]]
path = "/Guests"
pop = false
"#;

#[test]
fn shipped_policy_loads_the_shipped_directory() {
    let c = Config::load(&shipped()).unwrap();
    let dir = shipped().parent().unwrap().to_owned();
    assert_eq!(c.policy.directory, Some(dir.join("directory.toml")));
    assert_eq!(
        c.policy.disclose_reasons,
        crate::policy::DiscloseReasons::Never
    );
    assert_eq!(c.policy.contact, "it-help@example.com");
    assert!(c.policy.revoke_on_reload);
    assert!(!c.directory.is_builtin());
    assert!(c.directory.principal("bob@example.com").is_some());
    assert!(!c.warnings().iter().any(|w| w.starts_with("policy:")));
}

/// The directory's `upstream` names must be `[[upstream]]`s of this file, of the protocol the
/// table form names them for; `revoke_on_reload` is on unless switched off.
#[test]
fn directory_routes_name_real_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let directory = |route: &str| {
        format!(
            "[[ou]]\npath = \"/\"\npop = true\nimap = true\nimap_clients = \"all\"\n\
             password_logins = true\n{route}\n"
        )
    };
    let config = format!("{BASE}\n[policy]\ndirectory = \"directory.toml\"\n");
    let with = |route: &str| {
        std::fs::write(dir.path().join("directory.toml"), directory(route)).unwrap();
        Config::from_toml(&config, dir.path())
    };
    let c = with("upstream = \"dovecot\"").unwrap();
    assert!(c.policy.revoke_on_reload);
    for (route, needle) in [
        (
            "upstream = \"nope\"",
            "ou \"/\": upstream \"nope\" is not an [[upstream]]",
        ),
        (
            "upstream = { pop3 = \"dovecot\" }",
            "ou \"/\": upstream \"dovecot\" speaks imap, but is named for pop3",
        ),
    ] {
        let e = with(route).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path(), Some("policy.directory"), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

/// Every file in `config/` loads as shipped (docs/development.md section 7).
#[test]
fn every_shipped_file_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        match path.file_name().and_then(|n| n.to_str()) {
            Some("mailgate.toml") => {
                Config::load(&path).unwrap();
            }
            Some("directory.toml") => {
                crate::directory::Directory::from_toml(&std::fs::read_to_string(&path).unwrap())
                    .unwrap();
            }
            Some(other) if other.ends_with(".toml") => panic!("no loader test for {other}"),
            _ => continue,
        }
        seen += 1;
    }
    assert_eq!(seen, 2);
}

#[test]
fn no_policy_means_the_builtin_directory_and_a_warning() {
    let c = load(BASE).unwrap();
    assert!(c.directory.is_builtin());
    assert_eq!(c.policy, PolicyConfig::default());
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("policy: no [policy] table; every login the upstream accepts")),
        "{:#?}",
        c.warnings()
    );
}

#[test]
fn policy_keys_are_read() {
    let (_d, c) = with_directory(
        "directory = \"dir.toml\"\ndefault_ou = \"/Guests\"\ndisclose_reasons = \"always\"\n\
         contact = \"helpdesk, ext. 42\"\nrevoke_on_reload = true\n",
        SMALL_DIRECTORY,
    );
    let c = c.unwrap();
    assert_eq!(&*c.directory.default_ou().unwrap().path, "/Guests");
    assert_eq!(c.policy.default_ou.as_deref(), Some("/Guests"));
    assert_eq!(
        c.policy.disclose_reasons,
        crate::policy::DiscloseReasons::Always
    );
    assert_eq!(c.policy.contact, "helpdesk, ext. 42");
    assert!(c.policy.revoke_on_reload);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("policy.disclose_reasons"))
    );
}

#[test]
fn policy_errors_name_their_key_path() {
    let (_d, r) = with_directory("directory = \"dir.toml\"\ncolour = 1\n", SMALL_DIRECTORY);
    let all: Vec<String> = r.unwrap_err().0.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with("policy: unknown field `colour`"),
        "{all:#?}"
    );

    let (_d, r) = with_directory(
        "directory = \"dir.toml\"\ndefault_ou = \"/Nope\"\n",
        SMALL_DIRECTORY,
    );
    let all: Vec<String> = r.unwrap_err().0.iter().map(ToString::to_string).collect();
    assert_eq!(all, ["policy.default_ou: no OU \"/Nope\" in dir.toml"]);

    let (_d, r) = with_directory("directory = \"missing.toml\"\n", SMALL_DIRECTORY);
    let all: Vec<String> = r.unwrap_err().0.iter().map(ToString::to_string).collect();
    assert!(
        all[0].starts_with("policy.directory: cannot read "),
        "{all:#?}"
    );

    let (_d, r) = with_directory(
        "directory = \"dir.toml\"\ncontact = \"a\\nb\"\n",
        SMALL_DIRECTORY,
    );
    let all: Vec<String> = r.unwrap_err().0.iter().map(ToString::to_string).collect();
    assert!(
        all[0].starts_with("policy.contact: must be one line"),
        "{all:#?}"
    );
}

#[test]
fn directory_errors_carry_the_file_and_key_path() {
    let (_d, r) = with_directory(
        "directory = \"dir.toml\"\n",
        &format!(
            "{SMALL_DIRECTORY}\n[[user]]\nemail = \"a@example.com\"\nou = \"/Nope\"\n\
             [[group]]\nemail = \"g@example.com\"\nmembers = [\"x@example.com\"]\n"
        ),
    );
    let errors = r.unwrap_err();
    let all: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        all,
        [
            "dir.toml: user[0].ou: unknown OU \"/Nope\"",
            "dir.toml: group[0].members[0]: unknown member \"x@example.com\": no [[user]] or \
             [[group]] has this email",
        ]
    );
    assert_eq!(errors.0[0].path(), Some("user[0].ou"));
}

#[test]
fn lockout_keys_are_read_and_the_secret_is_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lockout.key"), "s3cret\n").unwrap();
    let text = format!(
        "{BASE}[limits]\nlogin_failures_per_user = 4\nlogin_failures_per_ip = 7\n\
         token_failures_per_ip = 9\nfamiliar_for = \"7d\"\nsecret_file = \"lockout.key\"\n"
    );
    let c = Config::from_toml(&text, dir.path()).unwrap();
    let t = c.limits.throttle;
    assert_eq!((t.failures_per_user, t.failures_per_ip), (4, 7));
    assert_eq!(t.token_failures_per_ip, 9);
    assert_eq!(t.familiar_for, Duration::from_secs(7 * 86_400));
    assert_eq!(t.key, Some(crate::throttle::Key::derive(b"s3cret")));
    assert!(!format!("{c:?}").contains("s3cret"));
    // Without a secret: none, and each process makes its own.
    assert_eq!(load(BASE).unwrap().limits.throttle.key, None);
    // A literal secret is refused without being echoed.
    let text = format!("{BASE}[limits]\nsecret = \"hunter2\"\n");
    let all = errors(&text);
    assert!(all[0].starts_with("limits.secret: "), "{all:?}");
    assert!(!all[0].contains("hunter2"), "{all:?}");
    assert_one(
        &format!("{BASE}[limits]\nsecret = \"env:MAILGATE_TEST_UNSET_LOCKOUT\"\n"),
        "limits.secret",
        "unset or empty",
    );
    assert_one(
        &format!("{BASE}[limits]\nsecret = \"env:X\"\nsecret_file = \"k\"\n"),
        "limits.secret",
        "not both",
    );
    // An empty or unreadable key file is refused, naming the file.
    std::fs::write(dir.path().join("empty.key"), " \n").unwrap();
    for (file, why) in [("empty.key", "is empty"), ("missing.key", "cannot read")] {
        let text = format!("{BASE}[limits]\nsecret_file = \"{file}\"\n");
        let all = match Config::from_toml(&text, dir.path()) {
            Ok(_) => panic!("{file} accepted"),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("limits.secret_file: "), "{all:?}");
        assert!(all[0].contains(file) && all[0].contains(why), "{all:?}");
    }
}

// ---- [[oauth.client]], [grants] (shared mailboxes, issue 11) ----

const CLIENT: &str = r#"
[[oauth.client]]
name = "m365"
client_id = "abc"
client_secret = "env:MAILGATE_TEST_GRANT_SECRET_UNSET"
token_endpoint = "https://login.example.com/token"
device_authorization_endpoint = "https://login.example.com/devicecode"
scopes = ["mail", "offline_access"]
"#;

#[test]
fn grants_and_client_load_with_defaults() {
    let c = load(&format!(
        "{BASE}\n[[oauth.client]]\nname = \"m365\"\nclient_id = \"abc\"\n\
         token_endpoint = \"https://login.example.com/token\"\n\
         device_authorization_endpoint = \"https://login.example.com/devicecode\"\n\
         [grants]\ndir = \"grants\"\n"
    ))
    .unwrap();
    let g = c.grants.unwrap();
    assert_eq!(g.dir, Path::new("/etc/mailgate/grants"));
    assert_eq!(g.login_separator, "*");
    assert_eq!(g.retry_after, Duration::from_secs(10));
    let client = &c.oauth.clients[0];
    assert_eq!(client.request_timeout, Duration::from_secs(10));
    assert!(client.client_secret.is_none());
}

#[test]
fn client_secret_in_the_file_is_refused_without_echo() {
    let text = format!(
        "{BASE}{}",
        CLIENT.replace("env:MAILGATE_TEST_GRANT_SECRET_UNSET", "s3cr3t-value")
    );
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with("oauth.client \"m365\".client_secret: "),
        "{all:#?}"
    );
    assert!(!all[0].contains("s3cr3t-value"), "{all:#?}");
}

#[test]
fn client_needs_an_authorisation_endpoint_and_https() {
    let text = format!(
        "{BASE}\n[[oauth.client]]\nname = \"m365\"\nclient_id = \"abc\"\n\
         token_endpoint = \"http://login.example.com/token\"\n"
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all.iter()
            .any(|e| e.contains("token_endpoint") && e.contains("https://"))
    );
    assert!(
        all.iter()
            .any(|e| e.contains("device_authorization_endpoint"))
    );
}

#[test]
fn grants_separator_must_not_occur_in_addresses() {
    for bad in ["@", "a", ".", " ", "", "*****"] {
        assert_one(
            &format!("{BASE}\n[grants]\ndir = \"g\"\nlogin_separator = \"{bad}\"\n"),
            "grants.login_separator",
            "cannot occur in an address",
        );
    }
}

#[test]
fn grants_unknown_key_rejected() {
    assert_one(
        &format!("{BASE}\n[grants]\ndir = \"g\"\nseparator = \"*\"\n"),
        "grants",
        "unknown field `separator`",
    );
}

/// A [[shared_mailbox]] names upstreams of the main config and needs [grants].
#[test]
fn shared_mailbox_references_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("directory.toml");
    std::fs::write(
        &directory,
        "[[ou]]\npath = \"/\"\npop = true\nimap = true\nimap_clients = \"all\"\n\
         password_logins = true\n[[user]]\nemail = \"alice@example.com\"\nou = \"/\"\n\
         [[shared_mailbox]]\naddress = \"office@example.com\"\nupstream = [\"dovecot\", \"nope\"]\n\
         grant = \"office\"\nassigned = [\"alice@example.com\"]\nprotocols = [\"pop3\"]\n",
    )
    .unwrap();
    let text = format!(
        "{BASE}\n[policy]\ndirectory = \"{}\"\n",
        directory.display()
    );
    let all = errors(&text);
    assert!(
        all.iter()
            .any(|e| e.starts_with("shared_mailbox[0].upstream: ") && e.contains("\"nope\"")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.starts_with("shared_mailbox[0].protocols: ")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.starts_with("shared_mailbox[0].grant: ") && e.contains("[grants]")),
        "{all:#?}"
    );
    assert_eq!(all.len(), 3, "{all:#?}");
}

/// The commented `[[shared_mailbox]]` example of the shipped directory and the commented
/// `[grants]` of the shipped config load once uncommented, as the comments promise.
#[test]
fn shipped_shared_mailbox_example_loads_when_uncommented() {
    let base = shipped().parent().unwrap().to_owned();
    let uncomment = |text: &str, from: &str| -> String {
        text.lines()
            .skip_while(|l| *l != from)
            .take_while(|l| l.starts_with("# ") && !l.trim_end().ends_with('#'))
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let directory = std::fs::read_to_string(base.join("directory.toml")).unwrap();
    let shared = uncomment(&directory, "# [[shared_mailbox]]");
    assert!(shared.contains("grant = \"office\""), "{shared}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("directory.toml");
    std::fs::write(&path, format!("{directory}\n{shared}\n")).unwrap();
    let main = std::fs::read_to_string(shipped()).unwrap();
    let grants = uncomment(&main, "# [grants]");
    assert!(grants.contains("dir = "), "{grants}");
    let text = main.replace(
        "directory = \"directory.toml\"",
        &format!("directory = \"{}\"", path.display()),
    );
    let c = Config::from_toml(&format!("{text}\n{grants}\n"), &base).unwrap();
    assert_eq!(c.directory.shared_mailboxes().len(), 1);
    assert_eq!(c.grants.unwrap().dir, Path::new("/var/lib/mailgate/grants"));
}
