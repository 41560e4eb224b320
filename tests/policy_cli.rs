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

/// Each needle in `text`, with runs of spaces counted as one: table columns widen with their
/// longest value, and the tests are about the values.
#[track_caller]
fn assert_has(text: &str, needles: &[&str]) {
    let squeeze = |s: &str| {
        s.split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let squeezed = squeeze(text);
    for n in needles {
        assert!(squeezed.contains(&squeeze(n)), "missing {n:?} in\n{text}");
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
            "imap_clients allowlist [apple-ios-mail, apple-macos-mail, com.apple.mail] ou:/Sales",
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
            // Let through by the /Sales allowlist: that is the source (issue 13 item 5).
            "decision   allow (source ou:/Sales)",
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
            "    query     member.type == user && member.internal",
            "engineering@example.com  non-compliant-locked",
            "    query     member.type == user || (member.type == group && member.internal)",
            "    offender  eng-robots@example.com is a group that carries fewer restrictions; \
             direct member (group[4].members[1])",
            "    offender  archiver@example.com is a service, which may not join; via \
             eng-robots@example.com (group[4].members[1])",
            "all-staff@example.com    non-compliant",
            "    offender  pat@contractor.example is a user outside the internal domains, which \
             may join only from inside; via sales-team@example.com (group[5].members[0])",
            "    effect    offenders gain nothing through this group's policy",
            "6 group(s): 4 compliant, 1 non-compliant, 1 non-compliant-locked",
        ],
    );
}

#[test]
fn groups_json_is_one_document_for_scripts() {
    let config = shipped();
    let out = mailgate(&["groups", "--json", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all_staff = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["email"] == "all-staff@example.com")
        .unwrap();
    assert_eq!(all_staff["state"], "non-compliant");
    let pat = all_staff["offenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["email"] == "pat@contractor.example")
        .unwrap();
    assert_eq!(pat["rule"], "external");
    assert_eq!(pat["via"], serde_json::json!(["sales-team@example.com"]));
    assert_eq!(pat["entry"], "group[5].members[0]");
    assert_eq!(doc["summary"]["non_compliant_locked"], 1);
}

/// Report only, the client catalogue and routing as `explain` shows them (issue 13).
#[test]
fn explain_shows_report_only_client_names_and_route() {
    let mia = explain(&["mia@example.com", "--protocol", "imap"]);
    assert_has(
        &mia,
        &[
            "imap_clients     allowlist [apple-ios-mail, apple-macos-mail, thunderbird]  \
             ou:/Marketing",
            "enforce          off (report only) until 2027-01-15",
            "decision   would_deny password_login_disabled (source ou:/); report only",
            "routed     imap logins go to the listener's upstream (dovecot-imap; source listener)",
        ],
    );
    assert!(
        !mia.contains("reply "),
        "nothing is sent in report-only mode:\n{mia}"
    );
    let bob = explain(&[
        "bob@example.com",
        "--protocol",
        "imap",
        "--client-id",
        "946018238758-bi6ni53dfoddlgn97pk3b8i7nphige40.apps.googleusercontent.com",
    ]);
    assert_has(
        &bob,
        &[
            "client id  946018238758-bi6ni53dfoddlgn97pk3b8i7nphige40.apps.googleusercontent.com \
             (apple-macos-mail)",
            "decision   allow (source ou:/Sales)",
            "all-staff@example.com   via sales-team@example.com; no policy; from file:; \
             non-compliant member",
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

/// Fenced blocks of `file` (relative to the repository) as lists of lines.
fn fenced_blocks(file: &str) -> Vec<Vec<String>> {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut blocks = Vec::new();
    // (lines so far, the fence's indentation: a block inside a list item is indented)
    let mut current: Option<(Vec<String>, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            match current.take() {
                Some((block, _)) => blocks.push(block),
                None => current = Some((Vec::new(), line[..line.len() - trimmed.len()].to_owned())),
            }
        } else if let Some((block, indent)) = current.as_mut() {
            block.push(
                line.strip_prefix(indent.as_str())
                    .unwrap_or(line)
                    .to_owned(),
            );
        }
    }
    blocks
}

/// The `$ mailgate ...` examples in docs/policy.md are real: each command, run on the shipped
/// config, prints exactly the output shown under it. README's excerpt of `mailgate groups` is
/// part of that real output.
#[test]
fn documented_explain_and_groups_output_is_real() {
    let config = shipped();
    let mut checked = 0;
    for block in fenced_blocks("docs/policy.md") {
        let Some(command) = block.first().and_then(|l| l.strip_prefix("$ mailgate ")) else {
            continue;
        };
        let mut args: Vec<&str> = command.split_whitespace().collect();
        args.extend_from_slice(&["--config", config.to_str().unwrap()]);
        let out = mailgate(&args);
        assert_eq!(out.status.code(), Some(0), "{command}");
        let got = String::from_utf8(out.stdout).unwrap();
        let want = block[1..].join("\n");
        assert_eq!(
            got.trim_end(),
            want.trim_end(),
            "docs/policy.md: $ mailgate {command}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} examples found");

    let groups = mailgate(&["groups", "--config", config.to_str().unwrap()]);
    let groups = String::from_utf8(groups.stdout).unwrap();
    let excerpt = fenced_blocks("README.md")
        .into_iter()
        .find(|b| {
            b.iter()
                .any(|l| l.contains("all-staff@example.com    non-compliant"))
        })
        .expect("README shows a groups excerpt");
    for line in excerpt {
        assert!(
            groups.lines().any(|g| g == line),
            "README line {line:?} not in\n{groups}"
        );
    }
}
