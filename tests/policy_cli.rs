//! The `mailgate` binary's `explain` and `groups` subcommands on the shipped config: real
//! output, exit codes, and `--help` examples.

// A test binary: helpers outside #[test] functions should fail loudly too.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/mailgate.toml")
}

fn mailgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `explain` on the shipped config; returns stdout after asserting exit 0.
fn explain(args: &[&str]) -> String {
    let config = shipped();
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config.to_str().unwrap()]);
    let out = mailgate(&all);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[track_caller]
fn assert_has(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "missing {n:?} in\n{text}");
    }
}

#[test]
fn alice_may_use_imap_with_a_password() {
    let out = explain(&["alice@example.com", "--protocol", "imap"]);
    assert_has(
        &out,
        &[
            "user       alice@example.com (user, ou /Engineering; from file:)",
            "mechanism  login (password)",
            "password_logins  on     ou:/Engineering",
            "engineering@example.com  direct; no policy",
            "decision   allow (source ou:/)",
        ],
    );
}

#[test]
fn bob_pop_with_password_allowed_imap_with_password_refused() {
    let pop = explain(&["bob@example.com", "--protocol", "pop3"]);
    assert_has(
        &pop,
        &[
            "password_logins  on                          group:legacy-pop@example.com",
            "decision   allow (source ou:/Sales)",
        ],
    );
    let imap = explain(&["BOB@example.com", "--protocol", "imap"]);
    assert_has(
        &imap,
        &[
            "imap_clients     allowlist [com.apple.mail]  ou:/Sales",
            "decision   deny client_not_allowed (source ou:/Sales)",
            "reply      NO [AUTHENTICATIONFAILED] Authentication failed (generic",
        ],
    );
    let apple = explain(&[
        "bob@example.com",
        "--protocol",
        "imap",
        "--client-id",
        "com.apple.mail",
    ]);
    assert_has(
        &apple,
        &[
            "mechanism  xoauth2 (oauth)",
            "decision   allow (source ou:/)",
        ],
    );
}

#[test]
fn intern_refused_imap_and_told_why_once_proven() {
    let out = explain(&[
        "carol@example.com",
        "--protocol",
        "imap",
        "--mechanism",
        "oauthbearer",
        "--client-id",
        "com.apple.mail",
    ]);
    assert_has(
        &out,
        &[
            "imap             off                         ou:/Sales/Interns",
            "decision   deny imap_disabled (source ou:/Sales/Interns)",
            "reply      NO [AUTHORIZATIONFAILED] IMAP access is turned off for your account by \
             your organisation. Ask it-help@example.com.",
        ],
    );
}

#[test]
fn unknown_and_suspended_users() {
    let out = explain(&["nobody@example.com", "--protocol", "pop3"]);
    assert_has(
        &out,
        &[
            "nobody@example.com (not in the directory)",
            "decision   deny unknown_user (source default)",
        ],
    );
    let out = explain(&["erin@example.com", "--protocol", "pop3"]);
    assert_has(&out, &["decision   deny suspended (source user)"]);
}

#[test]
fn mechanism_must_exist_on_the_protocol() {
    let out = mailgate(&[
        "explain",
        "bob@example.com",
        "--protocol",
        "pop3",
        "--mechanism",
        "login",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--mechanism login does not exist on pop3"));
    // The usage line is explain's own, as clap prints for any other bad explain flag.
    assert!(
        stderr.contains("Usage: mailgate explain"),
        "usage line is not explain's:\n{stderr}"
    );
}

/// POP3 has its own response codes (RFC 2449 / 3206): a policy refusal there is `-ERR [AUTH]`,
/// never IMAP's `AUTHORIZATIONFAILED`; a temporary one `-ERR [SYS/TEMP]`.
#[test]
fn pop3_refusals_show_the_pop3_reply() {
    let proven = explain(&[
        "dave@example.com",
        "--protocol",
        "pop3",
        "--mechanism",
        "xoauth2",
    ]);
    assert_has(
        &proven,
        &[
            "decision   deny pop_disabled (source user)",
            "reply      -ERR [AUTH] POP access is turned off for your account by your \
             organisation. Ask it-help@example.com.",
        ],
    );
    assert!(!proven.contains("AUTHORIZATIONFAILED"), "{proven}");
    let password = explain(&["dave@example.com", "--protocol", "pop3"]);
    assert_has(
        &password,
        &["reply      -ERR [AUTH] Authentication failed (generic"],
    );
}

#[test]
fn config_error_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailgate.toml");
    std::fs::write(&config, "[policy]\ndirectory = \"nope.toml\"\n").unwrap();
    for sub in ["explain", "groups"] {
        let mut args = vec![sub];
        if sub == "explain" {
            args.extend_from_slice(&["a@example.com", "--protocol", "imap"]);
        }
        args.extend_from_slice(&["--config", config.to_str().unwrap()]);
        let out = mailgate(&args);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("policy.directory: cannot read"));
    }
}

#[test]
fn groups_reports_compliance_with_offenders() {
    let config = shipped();
    let out = mailgate(&["groups", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_has(
        &text,
        &[
            "imap-pilot@example.com   compliant",
            "engineering@example.com  non-compliant-locked",
            "all-staff@example.com    non-compliant",
            "pat@contractor.example  outside the internal domains, via sales-team@example.com",
            "archiver@example.com    service member not allowed, via engineering@example.com → \
             eng-robots@example.com",
            "6 group(s): 4 compliant, 1 non-compliant, 1 non-compliant-locked",
        ],
    );
}

#[test]
fn help_shows_examples() {
    for sub in ["explain", "groups"] {
        let out = mailgate(&[sub, "--help"]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("mailgate ") && text.contains("Example"),
            "{sub}: {text}"
        );
    }
}
