//! The `mailgate` binary itself: `check` exit codes and messages, and `run` with the shipped
//! config until SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mailgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailgate"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = mailgate()
        .args(["check"])
        .output()
        .expect("run mailgate check");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("config/mailgate.toml: ok"), "{stdout}");
}

#[test]
fn check_reports_every_error_with_its_key_path_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"x\"\nprotocol = \"imap\"\nbind = \"0.0.0.0:143\"\ntls = \"none\"\n\
         upstream = \"missing\"\n\n[limits]\nauth_timeout = \"soon\"\nbogus = 1\n",
    )
    .expect("write config");
    let out = mailgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run mailgate check");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["listener[0]", "upstream", "limits", "bogus"] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_on_a_missing_file_exits_1() {
    let out = mailgate()
        .args(["check", "--config", "/nonexistent/mailgate.toml"])
        .output()
        .expect("run mailgate check");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mailgate.toml"));
}

#[test]
fn help_shows_examples_and_only_working_subcommands() {
    let out = mailgate()
        .arg("--help")
        .output()
        .expect("run mailgate --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("check"), "{help}");
    for sub in ["run", "check"] {
        let out = mailgate().args([sub, "--help"]).output().expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{sub} --help: {text}");
    }
}

#[test]
fn run_serves_with_a_config_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailgate.toml");
    // The shipped config's TLS section (self-signed generation) with a free port.
    std::fs::write(
        &config,
        "[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\n\
         tls = \"implicit\"\nupstream = \"up\"\n\n[[upstream]]\nname = \"up\"\nprotocol = \"imap\"\n\
         addresses = [\"127.0.0.1:9\"]\ntls = \"none\"\n\n[tls]\ncert_file = \"dev/cert.pem\"\n\
         key_file = \"dev/key.pem\"\ngenerate_self_signed = true\n",
    )
    .expect("write config");
    let mut child = mailgate()
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mailgate run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Readiness: the "listening" log line (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("listening")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("mailgate did not start listening: {seen:#?}"),
        }
    }
    assert!(seen.iter().any(|l| l.contains("self-signed")), "{seen:#?}");
    assert!(dir.path().join("dev/cert.pem").exists() && dir.path().join("dev/key.pem").exists());
    // SAFETY: plain FFI call sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mailgate did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// Issue 9 item 7: with `filter = "trace"` and stderr written into the watched config
/// directory, each log write is a file event in that directory. Logging per event made the log
/// feed itself (12 MB/s). Idle, the log must stay small; an edit of the config is one reload,
/// logged once.
#[test]
fn trace_logging_into_the_config_directory_does_not_feed_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailgate.toml");
    let text = "[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\n\
         tls = \"implicit\"\nupstream = \"up\"\n\n[[upstream]]\nname = \"up\"\nprotocol = \"imap\"\n\
         addresses = [\"127.0.0.1:9\"]\ntls = \"none\"\n\n[tls]\ncert_file = \"dev/cert.pem\"\n\
         key_file = \"dev/key.pem\"\ngenerate_self_signed = true\n\n[log]\nfilter = \"trace\"\n";
    std::fs::write(&config, text).expect("write config");
    let log = dir.path().join("mailgate.log");
    let child = mailgate()
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn mailgate run");
    let child = Child(child);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !read().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log: {} bytes",
                read().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("listening");

    // The window measured, not a synchronisation: an idle server writes (almost) nothing.
    let before = std::fs::metadata(&log).expect("log").len();
    std::thread::sleep(Duration::from_secs(2));
    let idle = std::fs::metadata(&log).expect("log").len() - before;
    assert!(idle < 8 * 1024, "{idle} bytes of log in 2 s of idling");

    // One edit: one reload, logged once.
    std::fs::write(&config, format!("{text}# edited\n")).expect("edit config");
    wait_for("configuration reloaded");
    std::thread::sleep(Duration::from_secs(1));
    let after = read();
    assert_eq!(
        after.matches("configuration reloaded").count(),
        1,
        "{after}"
    );
    let grown = after.len() as u64 - before;
    assert!(
        grown < 64 * 1024,
        "{grown} bytes of log for idling and one reload"
    );
    drop(child);
}

/// Kills the child when the test ends, passed or failed.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
