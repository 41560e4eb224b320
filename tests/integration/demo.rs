//! `scripts/demo --check`: the README's first command shows the gate working. The demo starts
//! its own Dovecot and mailgate (this test's binary, on free ports), runs the commands it
//! prints, and checks them itself; this test checks the outcomes again from its output and
//! from the audit file it leaves behind. The demo's client connects from 127.0.0.2 once, so
//! Dovecot's log can show that it was told the real client address.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::util::free_port;

/// The demo waits 2 s on each of its two policy refusals (refusal_delay_min) and builds
/// nothing (MAILGATE_BIN); a minute is ample on a loaded machine.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn demo_check_allows_refuses_and_audits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<String> = (0..7).map(|_| free_port().to_string()).collect();
    let mut cmd = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo"));
    cmd.arg("--check")
        .env("MAILGATE_BIN", env!("CARGO_BIN_EXE_mailgate"))
        .env("MAILGATE_DEMO_DIR", dir.path())
        .env("MAILGATE_DEMO_PORTS", ports.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: on a timeout the demo's Dovecot and mailgate are killed with
        // it, not left listening.
        .process_group(0);
    let child = cmd.spawn().expect("spawn scripts/demo");
    let group = KillGroup(child.id().expect("demo pid") as libc::pid_t);
    let out = tokio::time::timeout(DEMO_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("scripts/demo --check did not finish within {DEMO_TIMEOUT:?}"))
        .expect("wait for scripts/demo");
    drop(group);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo --check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // What a user sees: alice's message, bob refused over IMAP (curl's "Login denied"),
    // bob's message over POP3, the reason in explain, the counters on /metrics.
    assert!(stdout.contains("Subject: message 1"), "{stdout}");
    // Dovecot saw alice's own address (she connected from 127.0.0.2), not mailgate's.
    assert!(
        stdout.contains("Login: user=<alice@example.com>, method=PLAIN, rip=127.0.0.2"),
        "{stdout}"
    );
    assert!(stdout.contains("curl: (67) Login denied"), "{stdout}");
    assert!(stdout.contains("Subject: welcome"), "{stdout}");
    assert!(
        stdout.contains("decision   deny client_not_allowed (source ou:/Sales)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"mailgate_logins_total{protocol="imap",decision="deny",reason="client_not_allowed"} 1"#
        ),
        "{stdout}"
    );
    assert!(
        !stdout.contains("expected 0") && !stdout.contains("expected 67"),
        "{stdout}"
    );

    // The audit file: (user, protocol) -> (decision, reason) of each auth record, the protocol
    // taken from the session's connect record.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit.log");
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
        .collect();
    let protocol: HashMap<&str, &str> = records
        .iter()
        .filter(|r| r["event"] == "connect")
        .map(|r| {
            (
                r["session"].as_str().unwrap(),
                r["protocol"].as_str().unwrap(),
            )
        })
        .collect();
    let auth: Vec<(&str, &str, &str, &str)> = records
        .iter()
        .filter(|r| r["event"] == "auth")
        .map(|r| {
            (
                r["user"].as_str().unwrap(),
                protocol[r["session"].as_str().unwrap()],
                r["decision"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        auth,
        [
            ("alice@example.com", "imap", "allow", "ok"),
            ("bob@example.com", "imap", "deny", "client_not_allowed"),
            ("bob@example.com", "pop3", "allow", "ok"),
            ("carol@example.com", "imap", "deny", "imap_disabled"),
        ],
        "{audit}"
    );
}

/// Kills a process group when dropped (a finished demo has left none behind; a hung one has).
struct KillGroup(libc::pid_t);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: killpg only sends a signal; ESRCH for a group already gone is harmless.
        unsafe {
            libc::killpg(self.0, libc::SIGKILL);
        }
    }
}
