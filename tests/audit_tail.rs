//! `mailgate audit tail`, run as the built binary over audit files written by the real
//! serializer: table and JSON output, every filter, `--since`, the config's default file,
//! `--follow` across rename and truncate, and a reader that closes the pipe early.

// Test helpers outside `#[test]` functions panic on purpose (as tests/integration/main.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use mailgate::audit::{Auth, Connect, End, Event, Record, Reload, ReloadOutcome, SessionEnd};
use mailgate::policy::Reason;
use mailgate::proto::{Mechanism, Protocol};

/// Bound on every wait for the child.
const WAIT: Duration = Duration::from_secs(10);

fn mailgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailgate"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn connect(protocol: Protocol) -> Event {
    Event::Connect(Connect {
        listener: format!("{}s", protocol.as_str()),
        protocol,
        client: "198.51.100.4:51000".parse().unwrap(),
        tls: Some(mailgate::audit::TlsVersion::Tls13),
        sni: Some("mail.example.com".to_owned()),
    })
}

fn auth(user: &str, reason: Reason) -> Event {
    Event::Auth(Auth {
        user: Some(user.to_owned()),
        ou: Some("/Sales".to_owned()),
        mechanism: Mechanism::XOAuth2,
        client_id: Some("thunderbird".to_owned()),
        issuer: Some("https://idp.example.com".to_owned()),
        reason,
        policy_source: Some("ou:/Sales".to_owned()),
        upstream: Some("dovecot-imap".to_owned()),
        client_name: None,
        would_deny: None,
        mailbox: None,
        grant: None,
    })
}

fn end(e: End) -> Event {
    Event::SessionEnd(SessionEnd {
        bytes_up: 512,
        bytes_down: 40960,
        duration_ms: 1500,
        end: e,
    })
}

fn line(minutes_ago: u64, session: Option<&str>, event: Event) -> Vec<u8> {
    let mut out = Vec::new();
    Record {
        ts: SystemTime::now() - Duration::from_secs(minutes_ago * 60),
        session: session.map(str::to_owned),
        event,
    }
    .write_json(&mut out)
    .unwrap();
    out
}

const S1: &str = "0193c1d2e3f47a8b9c0d1e2f3a4b5c6d";
const S2: &str = "0193c1d2e3f47a8b9c0d11111111aaaa";
const S3: &str = "0193c1d2e3f47a8b9c0d22222222bbbb";

/// S1: imap alice allowed (3 h ago). S2: pop3 bob refused pop_disabled. S3: imap carol refused
/// client_not_allowed. Then a reload.
fn fixture(dir: &Path) -> PathBuf {
    let path = dir.join("audit.log");
    let mut bytes = Vec::new();
    for (ago, session, event) in [
        (180, Some(S1), connect(Protocol::Imap)),
        (180, Some(S1), auth("alice@example.com", Reason::Ok)),
        (179, Some(S1), end(End::ClientClosed)),
        (5, Some(S2), connect(Protocol::Pop3)),
        (5, Some(S2), auth("bob@example.com", Reason::PopDisabled)),
        (5, Some(S2), end(End::ClientClosed)),
        (4, Some(S3), connect(Protocol::Imap)),
        (
            4,
            Some(S3),
            auth("carol@example.com", Reason::ClientNotAllowed),
        ),
        (4, Some(S3), end(End::Error)),
        (
            1,
            None,
            Event::Reload(Reload {
                outcome: ReloadOutcome::Rejected {
                    error: "listener[0].bind: bad".to_owned(),
                },
                config_digest: None,
                source: Default::default(),
                changes: None,
            }),
        ),
    ] {
        bytes.extend(line(ago, session, event));
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

fn tail(args: &[&str]) -> Output {
    mailgate()
        .args(["audit", "tail"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The `event` of each JSON line, with the reason for auth records.
fn events(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match v["event"].as_str().unwrap() {
                "auth" => format!("auth:{}", v["reason"].as_str().unwrap()),
                e => e.to_owned(),
            }
        })
        .collect()
}

#[test]
fn table_output_is_aligned_with_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path());
    let text = stdout_ok(&tail(&["--file", path.to_str().unwrap()]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 11, "{text}");
    let header = lines[0];
    for col in [
        "TIME", "EVENT", "SESSION", "USER", "PROTO", "DECISION", "REASON", "DETAIL",
    ] {
        assert!(header.contains(col), "{header}");
    }
    // Every row has its columns where the header has them.
    let reason_at = header.find("REASON").unwrap();
    let auth = lines.iter().find(|l| l.contains("pop_disabled")).unwrap();
    assert_eq!(auth.find("pop_disabled"), Some(reason_at), "{text}");
    let session_at = header.find("SESSION").unwrap();
    assert_eq!(&auth[session_at..session_at + 12], "11111111aaaa", "{text}");
    assert!(
        auth.contains("bob@example.com") && auth.contains("pop3"),
        "{text}"
    );
    assert!(auth.contains("deny"), "{text}");
    // session_end rows carry the session's user and protocol from earlier records.
    let end = lines
        .iter()
        .find(|l| l.contains("session_end") && l.contains("11111111aaaa"))
        .unwrap();
    assert!(
        end.contains("bob@example.com") && end.contains("pop3"),
        "{end}"
    );
    assert!(
        end.contains("end=client_closed up=512 down=40960 ms=1500"),
        "{end}"
    );
    let reload = lines.last().unwrap();
    assert!(
        reload.contains("reload") && reload.contains("result=rejected"),
        "{reload}"
    );
}

#[test]
fn json_output_is_the_file_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path());
    let text = stdout_ok(&tail(&["--json", "--file", path.to_str().unwrap()]));
    assert_eq!(text, std::fs::read_to_string(&path).unwrap());
}

#[test]
fn each_filter_and_their_combination() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path());
    let file = path.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--json", "--file", file];
        all.extend_from_slice(args);
        events(&stdout_ok(&tail(&all)))
    };
    let session = |reason: &str| {
        vec![
            "connect".to_owned(),
            format!("auth:{reason}"),
            "session_end".to_owned(),
        ]
    };

    assert_eq!(run(&["--user", "alice@example.com"]), session("ok"));
    assert_eq!(run(&["--decision", "allow"]), session("ok"));
    assert_eq!(run(&["--reason", "pop_disabled"]), session("pop_disabled"));
    assert_eq!(run(&["--protocol", "pop3"]), session("pop_disabled"));
    let mut deny = session("pop_disabled");
    deny.extend(session("client_not_allowed"));
    assert_eq!(run(&["--decision", "deny"]), deny);
    assert_eq!(
        run(&["--decision", "deny", "--protocol", "imap"]),
        session("client_not_allowed")
    );
    assert!(run(&["--decision", "deny", "--user", "alice@example.com"]).is_empty());
    assert_eq!(
        run(&["--session", "22222222bbbb"]),
        session("client_not_allowed")
    );
    // --since: the three-hour-old session is out, the reload (no session) is in.
    let recent = run(&["--since", "1h"]);
    assert_eq!(recent.len(), 7, "{recent:?}");
    assert_eq!(recent.last().map(String::as_str), Some("reload"));
    assert_eq!(run(&["--since", "4h"]).len(), 10);
}

#[test]
fn bad_arguments_and_missing_files_fail_cleanly() {
    let out = tail(&["--since", "soon", "--file", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
    let out = tail(&["--file", "/nonexistent/audit.log"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open /nonexistent/audit.log"),
        "{stderr}"
    );
    let out = tail(&["--reason", "because"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn help_has_an_example() {
    let text = stdout_ok(&tail(&["--help"]));
    assert!(text.contains("Examples:"), "{text}");
    assert!(text.contains("mailgate audit tail --follow"), "{text}");
}

#[test]
fn default_file_comes_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let config = dir.path().join("mailgate.toml");
    std::fs::write(
        &config,
        "[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:1143\"\n\
         tls = \"none\"\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nprotocol = \"imap\"\n\
         addresses = [\"127.0.0.1:143\"]\ntls = \"none\"\n\n[audit]\nfile = \"audit.log\"\n",
    )
    .unwrap();
    let text = stdout_ok(&tail(&["--json", "--config", config.to_str().unwrap()]));
    assert_eq!(events(&text).len(), 10);

    // A config without [audit] names no file.
    let bare = dir.path().join("bare.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&bare, text.replace("[audit]\nfile = \"audit.log\"\n", "")).unwrap();
    let out = tail(&["--config", bare.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --file"));

    // Issue 13: while directory.toml is invalid (when the rejected-reload record is wanted),
    // the audit file named in [audit] is still found: only [audit] is read.
    std::fs::write(dir.path().join("directory.toml"), "[[ou]]\npath = \"/\"\n").unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!("{text}[policy]\ndirectory = \"directory.toml\"\n"),
    )
    .unwrap();
    let text = stdout_ok(&tail(&["--json", "--config", broken.to_str().unwrap()]));
    assert_eq!(events(&text).len(), 10);
    // A broken [audit] itself is still reported.
    std::fs::write(&broken, text_with_bad_audit(&config)).unwrap();
    let out = tail(&["--config", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit"),
        "{out:?}"
    );
}

fn text_with_bad_audit(config: &Path) -> String {
    std::fs::read_to_string(config)
        .unwrap()
        .replace("[audit]\nfile = \"audit.log\"\n", "[audit]\nfile = \"\"\n")
}

/// Lines of a child's stdout, read on a thread so every wait can be bounded.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_session(rx: &mpsc::Receiver<String>) -> String {
    let line = rx
        .recv_timeout(WAIT)
        .expect("tail printed the record in time");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["session"].as_str().unwrap().to_owned()
}

fn append(path: &Path, session: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(&line(0, Some(session), end(End::ClientClosed)))
        .unwrap();
}

/// Kills the child when the test ends, pass or fail.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn follow_continues_across_rename_and_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    append(&path, "first");
    let child = mailgate()
        .args(["audit", "tail", "--follow", "--json", "--file"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let rx = lines_of(&mut child.0);
    // The first record printed means tail has the file open.
    assert_eq!(next_session(&rx), "first");
    append(&path, "appended");
    assert_eq!(next_session(&rx), "appended");

    // logrotate renames; mailgate writes a last record to the old file before its reopen.
    std::fs::rename(&path, &rotated).unwrap();
    append(&rotated, "late-in-old-file");
    append(&path, "in-new-file");
    assert_eq!(next_session(&rx), "late-in-old-file");
    assert_eq!(next_session(&rx), "in-new-file");
    append(&path, "more-in-new-file");
    assert_eq!(next_session(&rx), "more-in-new-file");

    // copytruncate: the same file starts again from zero.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    append(&path, "t");
    assert_eq!(next_session(&rx), "t");
    assert!(rx.try_recv().is_err(), "nothing printed twice");
}

#[test]
fn follow_waits_for_a_file_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let child = mailgate()
        .args(["audit", "tail", "-f", "--json", "--file"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let rx = lines_of(&mut child.0);
    append(&path, "created-later");
    assert_eq!(next_session(&rx), "created-later");
}

fn wait_bounded(mut child: Child) -> (ExitStatus, String) {
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let status = child.wait();
        let _ = tx.send((status, text));
    });
    let (status, stderr) = rx.recv_timeout(WAIT).expect("tail exited in time");
    (status.unwrap(), stderr)
}

#[test]
fn a_closed_pipe_ends_tail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    // Far more than a pipe buffer (64 KiB), so tail is still writing when the reader leaves.
    let mut bytes = Vec::new();
    for i in 0..20_000 {
        bytes.extend(line(0, Some(&format!("s{i:08}")), end(End::ClientClosed)));
    }
    std::fs::write(&path, bytes).unwrap();
    for format in [&[][..], &["--json"][..]] {
        let mut child = mailgate()
            .args(["audit", "tail", "--file"])
            .arg(&path)
            .args(format)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -1`: read one line, then close the pipe.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        let (status, stderr) = wait_bounded(child);
        assert!(status.success(), "{status:?} {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
    }
}

/// `--since` says once which units it takes, and takes every unit it names (days included:
/// "what happened this week" is `--since 7d`).
#[test]
fn since_message_names_exactly_the_units_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.log");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    let out = tail(&["--since", "7x", "--file", file]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ms, s, m, h or d"), "{stderr}");
    assert_eq!(
        stderr.matches("expected").count(),
        1,
        "said twice: {stderr}"
    );
    for unit in ["ms", "s", "m", "h", "d"] {
        stdout_ok(&tail(&["--since", &format!("7{unit}"), "--file", file]));
    }
    let help = stdout_ok(
        &mailgate()
            .args(["audit", "tail", "--help"])
            .output()
            .unwrap(),
    );
    assert!(help.contains("7d"), "{help}");
}
