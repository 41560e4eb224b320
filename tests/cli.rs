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

/// A `mailgate run` whose stderr goes to a file, started on `config` and waited for until it
/// logs `listening` (bounded). Killed when dropped.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn start(config: &std::path::Path) -> Running {
        let log = config.with_extension("log");
        let child = mailgate()
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn mailgate run");
        let running = Running {
            child: Child(child),
            log,
        };
        running.wait_for("listening");
        running
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the first listener, from its `listening` line.
    fn addr(&self) -> std::net::SocketAddr {
        let log = self.wait_for("listening");
        let line = log.lines().find(|l| l.contains("listening")).unwrap_or("");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        addr.parse().expect("listening address")
    }
}

/// Logs and audit records speak one vocabulary: a session the client ended is `end=client_closed`
/// in the log line as in the audit record, never the code's own `DownstreamClosed` or
/// `Machine(Logout)`.
#[test]
fn session_end_log_uses_the_audit_codes() {
    use std::io::{Read as _, Write as _};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailgate.toml");
    std::fs::write(
        &config,
        "[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\n\
         tls = \"none\"\nupstream = \"up\"\n\n[[upstream]]\nname = \"up\"\nprotocol = \"imap\"\n\
         addresses = [\"127.0.0.1:9\"]\ntls = \"none\"\n\n[audit]\nfile = \"audit.log\"\n",
    )
    .expect("write config");
    let running = Running::start(&config);
    let addr = running.addr();
    let timeout = Some(Duration::from_secs(10));
    // One client logs out, one just closes: both are client_closed in the audit.
    for logout in [true, false] {
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(timeout).expect("timeout");
        let mut greeting = [0u8; 512];
        let n = tcp.read(&mut greeting).expect("greeting");
        assert!(greeting[..n].starts_with(b"* OK"), "{:?}", &greeting[..n]);
        if logout {
            tcp.write_all(b"a LOGOUT\r\n").expect("logout");
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest);
        }
    }
    let audit = dir.path().join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .matches("session_end")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "two session_end records");
        std::thread::sleep(Duration::from_millis(20));
    }
    let audit = std::fs::read_to_string(&audit).expect("audit");
    assert_eq!(
        audit.matches("\"end\":\"client_closed\"").count(),
        2,
        "{audit}"
    );
    let log = running.wait_for("session ended");
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    assert_eq!(ended.len(), 2, "{log}");
    for line in ended {
        assert!(line.contains("end=client_closed"), "{line}");
    }
    assert!(
        !log.contains("DownstreamClosed") && !log.contains("Machine("),
        "{log}"
    );
}
