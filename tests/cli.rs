//! The `mailgate` binary itself: `check` exit codes and messages, and `run` with the shipped
//! config until SIGTERM.

// Test helpers outside `#[test]` functions panic on purpose (as tests/integration/main.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    let running = Running::start(&config);
    let log = &running.log;
    let read = || running.log();
    let wait_for = |needle: &str| drop(running.wait_for(needle));

    // The window measured, not a synchronisation: an idle server writes (almost) nothing.
    let before = std::fs::metadata(log).expect("log").len();
    std::thread::sleep(Duration::from_secs(2));
    let idle = std::fs::metadata(log).expect("log").len() - before;
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
    /// Held for its Drop (kills the process).
    _child: Child,
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
            _child: Child(child),
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

/// `check` and `run` on the same config: exit code and stderr. `run` that starts anyway (the
/// bug this guards against: a config `check` passed and `run` refused, or the reverse) is
/// stopped after its `listening` line and reported as such.
fn check_and_run(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> [String; 2] {
    let path = dir.join("mailgate.toml");
    std::fs::write(&path, config).expect("write config");
    let with_env = |mut cmd: Command| {
        cmd.env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let mut check = with_env(mailgate());
    let check = check
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    let log = dir.join("run.log");
    let mut run = with_env(mailgate());
    let run = run
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("run");
    let mut run = Child(run);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = run.0.try_wait().expect("wait") {
            break status.code();
        }
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening")
        {
            break None;
        }
        assert!(Instant::now() < deadline, "run neither failed nor listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(run);
    let run_err = std::fs::read_to_string(&log).unwrap_or_default();
    [
        format!(
            "exit {:?}\n{}",
            check.status.code(),
            String::from_utf8_lossy(&check.stderr)
        ),
        format!("exit {status:?}\n{run_err}"),
    ]
}

/// Issue 14: every start-up error `run` raises from its config, `check` raises too, with the
/// same text and the key path; one class of error per config.
#[test]
fn check_refuses_exactly_what_run_refuses_with_the_same_message() {
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let certs = certs.display();
    let base = |tls: &str, extra: &str| {
        format!(
            "[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\n\
             tls = \"implicit\"\nupstream = \"up\"\n\n[[upstream]]\nname = \"up\"\n\
             protocol = \"imap\"\naddresses = [\"127.0.0.1:9\"]\ntls = \"none\"\n\n[tls]\n{tls}\n\
             {extra}"
        )
    };
    let shipped_pair =
        format!("cert_file = \"{certs}/localhost.pem\"\nkey_file = \"{certs}/localhost.key\"\n");
    let upstream_tls = |ca: &str| {
        base(&shipped_pair, "").replace(
            "tls = \"none\"\n",
            &format!("tls = \"implicit\"\nca_file = \"{ca}\"\n"),
        )
    };
    // 192.0.2.1 (RFC 5737 documentation range) is on no interface of this host: binding it
    // fails with EADDRNOTAVAIL and sends nothing.
    // What, the config, extra environment, what check must say.
    type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)], &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown key",
            base(&shipped_pair, "[limits]\nbogus = 1\n"),
            &[],
            "limits: unknown field `bogus`",
        ),
        (
            "missing certificate",
            base("cert_file = \"nope.pem\"\nkey_file = \"nope.key\"\n", ""),
            &[],
            "tls.cert_file: certificate file",
        ),
        (
            "self-signed where it cannot be written",
            base(
                "cert_file = \"plainfile/c.pem\"\nkey_file = \"plainfile/k.pem\"\n\
                 generate_self_signed = true\n",
                "",
            ),
            &[],
            "tls.key_file: cannot write",
        ),
        (
            "half a pair with generate_self_signed",
            base(
                &format!(
                    "cert_file = \"gone.pem\"\nkey_file = \"{certs}/localhost.key\"\n\
                     generate_self_signed = true\n"
                ),
                "",
            ),
            &[],
            "tls.cert_file: ",
        ),
        (
            "certificate not PEM",
            base(
                &format!("cert_file = \"plainfile\"\nkey_file = \"{certs}/localhost.key\"\n"),
                "",
            ),
            &[],
            "tls.cert_file: ",
        ),
        (
            "key of another certificate",
            base(
                &format!("cert_file = \"{certs}/localhost.pem\"\nkey_file = \"{certs}/ca.key\"\n"),
                "",
            ),
            &[],
            "tls.key_file: certificate",
        ),
        (
            "CA file missing",
            upstream_tls("nope-ca.pem"),
            &[],
            "upstream \"up\".ca_file: cannot read",
        ),
        (
            "CA file not a certificate",
            upstream_tls("plainfile"),
            &[],
            "upstream \"up\".ca_file: ",
        ),
        (
            "audit file cannot be created",
            base(&shipped_pair, "[audit]\nfile = \"plainfile/audit.log\"\n"),
            &[],
            "audit.file: cannot open audit file",
        ),
        (
            "admin address not on this host",
            base(&shipped_pair, "[admin]\nbind = \"192.0.2.1:0\"\n"),
            &[],
            "admin.bind: cannot bind 192.0.2.1:0",
        ),
        (
            "listener address not on this host",
            base(&shipped_pair, "").replace("127.0.0.1:0", "192.0.2.1:0"),
            &[],
            "listener[0].bind: cannot bind 192.0.2.1:0",
        ),
        (
            "RUST_LOG that does not parse",
            base(&shipped_pair, ""),
            &[("RUST_LOG", "x=y=z")],
            "RUST_LOG: ",
        ),
    ];
    for (what, config, env, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("plainfile"), "not PEM\n").expect("plainfile");
        let [check, run] = check_and_run(dir.path(), &config, env);
        assert!(
            check.starts_with("exit Some(1)\n"),
            "{what}: check:\n{check}"
        );
        assert!(
            check.contains(expected),
            "{what}: no {expected:?} in check:\n{check}"
        );
        assert_eq!(check, run, "{what}: check and run differ");
    }
}

/// All at once: one `check` lists every file and address problem, each with its key path.
#[test]
fn check_lists_every_startup_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("plainfile"), "x").expect("plainfile");
    let config = "[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nbind = \"192.0.2.1:0\"\n\
         tls = \"implicit\"\nupstream = \"up\"\n\n[[upstream]]\nname = \"up\"\n\
         protocol = \"imap\"\naddresses = [\"127.0.0.1:9\"]\ntls = \"starttls\"\n\
         ca_file = \"nope.pem\"\n\n[tls]\ncert_file = \"plainfile/c.pem\"\n\
         key_file = \"plainfile/k.pem\"\ngenerate_self_signed = true\n\n[audit]\n\
         file = \"plainfile/audit.log\"\n\n[admin]\nbind = \"192.0.2.1:0\"\n";
    let [check, run] = check_and_run(dir.path(), config, &[]);
    assert_eq!(check, run);
    assert!(check.contains("5 error(s)"), "{check}");
    for key in [
        "listener[0].bind:",
        "tls.key_file:",
        "upstream \"up\".ca_file:",
        "audit.file:",
        "admin.bind:",
    ] {
        assert!(check.contains(key), "no {key} in:\n{check}");
    }
    // Each OS error said once.
    assert_eq!(check.matches("(os error 20)").count(), 2, "{check}");
}

/// An OS error in a failure of any subcommand is printed once, not once per error layer.
#[test]
fn os_errors_are_printed_once() {
    let out = mailgate()
        .args(["audit", "tail", "--file", "/nonexistent/audit.log"])
        .output()
        .expect("tail");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}
