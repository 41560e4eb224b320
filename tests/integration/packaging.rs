//! What `packaging/` ships, with the real tools: the Debian package built by `cargo deb` and
//! installed with `dpkg -i` (then checked, verified with `systemd-analyze`, removed and
//! purged), and the Prometheus rules and Grafana dashboard checked by `promtool` and against a
//! real `/metrics` scrape of the running binary.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::dovecot::Dovecot;
use crate::mailgate::Mailgate;
use crate::ops_e2e::http_get;
use crate::reload::{KillOnDrop, wait_for};
use crate::util::{assert_success, free_port, run_curl};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn packaging(file: &str) -> PathBuf {
    repo().join("packaging").join(file)
}

/// Runs `cmd` to completion, bounded (a hung dpkg or promtool fails the test).
fn output(cmd: &mut Command, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(180)) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            // SAFETY: plain FFI call on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what}: no exit within 180 s");
        }
    }
}

fn ok(cmd: &mut Command, what: &str) -> String {
    let out = output(cmd, what);
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Prometheus rules and Grafana dashboard
// ---------------------------------------------------------------------------------------------

/// `promtool check rules` (syntax, PromQL) and `promtool test rules` (each alert fires on the
/// first event of its kind, as mailgate exports its series from 0).
#[test]
fn alert_rules_pass_promtool() {
    let dir = packaging("prometheus");
    let checked = ok(
        Command::new("promtool")
            .args(["check", "rules", "mailgate.rules.yml"])
            .current_dir(&dir),
        "promtool check rules",
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    ok(
        Command::new("promtool")
            .args(["test", "rules", "mailgate.rules.test.yml"])
            .current_dir(&dir),
        "promtool test rules",
    );
}

/// Every `mailgate_*` name in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("mailgate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        into.insert(name);
    }
}

/// The names the dashboard's and the rules' queries use.
fn names_in_packaging() -> (BTreeSet<String>, BTreeSet<String>) {
    fn exprs(v: &serde_json::Value, into: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(e)) => {
                            metric_names(e, into)
                        }
                        _ => exprs(v, into),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, into)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(packaging("grafana/mailgate.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut in_dashboard = BTreeSet::new();
    exprs(&dashboard, &mut in_dashboard);
    let rules = std::fs::read_to_string(packaging("prometheus/mailgate.rules.yml")).unwrap();
    let mut in_rules = BTreeSet::new();
    for line in rules.lines() {
        if let Some(expr) = line.trim_start().strip_prefix("expr:") {
            metric_names(expr, &mut in_rules);
        }
    }
    (in_dashboard, in_rules)
}

/// The dashboard and the rules query only what mailgate exports: every metric name in them is
/// a sample in a real `/metrics` scrape of `mailgate run` after an IMAP and a POP3 login
/// through it to a real Dovecot (a renamed metric breaks this test, not a dashboard at 3 am).
#[tokio::test]
async fn dashboard_and_rules_use_only_metrics_mailgate_exports() {
    let (in_dashboard, in_rules) = names_in_packaging();
    assert!(in_dashboard.len() >= 10, "{in_dashboard:?}");
    for expected in [
        "mailgate_logins_total",
        "mailgate_connections_active",
        "mailgate_upstream_login_seconds_bucket",
        "mailgate_token_verification_seconds_bucket",
        "mailgate_audit_records_dropped_total",
        "mailgate_reloads_total",
    ] {
        assert!(
            in_dashboard.contains(expected),
            "dashboard lacks {expected}"
        );
    }
    for expected in [
        "mailgate_tls_certificate_expiry_timestamp_seconds",
        "mailgate_reloads_total",
        "mailgate_token_verification_seconds_count",
        "mailgate_audit_records_dropped_total",
    ] {
        assert!(in_rules.contains(expected), "rules lack {expected}");
    }

    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("mailgate.toml");
    let toml = Mailgate::builder(&dovecot)
        .extra(&format!(
            "[audit]\nfile = \"{}\"\n\n[admin]\nbind = \"{admin}\"\n",
            dir.path().join("audit.log").display()
        ))
        .toml();
    std::fs::write(&config, toml).expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mailgate");
    let _guard = KillOnDrop(child.id());
    let stderr = child.stderr.take().expect("stderr");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = |line: String| -> SocketAddr {
        line.rsplit("addr=")
            .next()
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    };
    let imap = addr(wait_for(&mut lines, "listener=imap-plain").await);
    let pop3 = addr(wait_for(&mut lines, "listener=pop3-plain").await);
    // One whole session per protocol with a real client: login, a command, logout.
    for url in [format!("imap://{imap}/INBOX"), format!("pop3://{pop3}/")] {
        let out = run_curl(&[
            "--max-time",
            "20",
            "-u",
            "alice@example.com:alice-secret",
            &url,
        ])
        .await;
        assert_success(&out);
    }
    // session_end (and its metrics) follow the client's close: poll the scrape, bounded.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (status, text) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        if text.contains("mailgate_sessions_ended_total{protocol=\"pop3\"") || {
            tokio::time::Instant::now() > deadline
        } {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = in_dashboard
        .iter()
        .chain(&in_rules)
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{text}");
    // The expiry gauge carries the served certificate's notAfter, not a placeholder.
    let expiry = text
        .lines()
        .find_map(|l| l.strip_prefix("mailgate_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .expect("expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        expiry > now,
        "certs/localhost.pem expiry {expiry} is not after {now}"
    );

    // SAFETY: plain FFI call sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    crate::reload::exits_cleanly(child).await;
}

// ---------------------------------------------------------------------------------------------
// The Debian package
// ---------------------------------------------------------------------------------------------

/// Purges the package when the test ends, passed or failed, so a failed run leaves no mailgate
/// installed on the machine.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "mailgate"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
}

/// dpkg, retried for up to a minute while another apt or dpkg holds the lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = output(
            Command::new("dpkg")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "dpkg",
        );
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !locked || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn dpkg_ok(args: &[&str]) {
    let out = dpkg(args);
    assert!(
        out.status.success(),
        "dpkg {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// README "Install": `cargo deb`, `dpkg -i`, and the installed config passes `mailgate check`
/// as shipped, for root and for the `mailgate` user the unit runs as (so the key, the config
/// and the audit directory are readable and writable where they must be). The unit verifies
/// with `systemd-analyze verify`. `dpkg -r` keeps the configuration, `dpkg -P` removes it and
/// the audit logs. Installs into this machine: CI runs the suite as root on a throwaway one.
#[test]
fn debian_package_installs_checks_and_purges() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "dpkg -i needs root (CI runs the suite as root)"
    );
    let out_dir = tempfile::tempdir().expect("tempdir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // The binary this test run already built (a release build would add minutes to the
    // suite): cargo-deb maps the asset target/release/mailgate to the dev profile's.
    let built = ok(
        Command::new(&cargo)
            .args([
                "deb",
                "--no-build",
                "--profile",
                "dev",
                "--fast",
                "--output",
            ])
            .arg(out_dir.path())
            .arg("--manifest-path")
            .arg(repo().join("Cargo.toml")),
        "cargo deb (install it with scripts/install-test-deps)",
    );
    let deb = built
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or_else(|| panic!("no .deb named in {built:?}"));
    assert!(
        deb.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("mailgate_")),
        "{deb:?}"
    );

    let _purge = Purge;
    dpkg_ok(&["--install", "--force-confnew", &deb.to_string_lossy()]);
    assert!(Path::new("/usr/bin/mailgate").exists());
    ok(
        Command::new("getent").args(["passwd", "mailgate"]),
        "mailgate user",
    );
    let conffiles = ok(
        Command::new("dpkg-query").args(["--showformat=${Conffiles}", "--show", "mailgate"]),
        "conffiles",
    );
    for f in [
        "/etc/mailgate/mailgate.toml",
        "/etc/mailgate/directory.toml",
        "/etc/logrotate.d/mailgate",
        "/etc/fail2ban/filter.d/mailgate.conf",
    ] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata("/etc/mailgate/mailgate.toml").expect("config");
        assert_eq!(meta.mode() & 0o777, 0o640, "config mode {:o}", meta.mode());
        let group = ok(Command::new("getent").args(["group", "mailgate"]), "group");
        assert!(group.contains(&format!(":{}:", meta.gid())), "{group}");
    }

    // The shipped config, as root and as the unit's user.
    let check = ["check", "--config", "/etc/mailgate/mailgate.toml"];
    let as_root = ok(
        Command::new("/usr/bin/mailgate").args(check),
        "mailgate check",
    );
    assert!(
        as_root.contains("ok (4 listener(s), 2 upstream(s))"),
        "{as_root}"
    );
    ok(
        Command::new("setpriv")
            .args(["--reuid=mailgate", "--regid=mailgate", "--init-groups"])
            .arg("/usr/bin/mailgate")
            .args(check),
        "mailgate check as the mailgate user",
    );

    // Installed again (an upgrade or a reinstall): postinst runs again without error, and an
    // edited conffile is kept (dpkg's choice for a non-interactive install that keeps local
    // changes).
    let config = Path::new("/etc/mailgate/mailgate.toml");
    let edited = format!(
        "{}\n# edited by the administrator\n",
        std::fs::read_to_string(config).expect("config")
    );
    std::fs::write(config, &edited).expect("edit config");
    dpkg_ok(&["--install", "--force-confold", &deb.to_string_lossy()]);
    assert_eq!(std::fs::read_to_string(config).expect("config"), edited);
    ok(
        Command::new("/usr/bin/mailgate").args(check),
        "check after reinstall",
    );

    let unit = [
        "/lib/systemd/system/mailgate.service",
        "/usr/lib/systemd/system/mailgate.service",
    ]
    .into_iter()
    .find(|u| Path::new(u).exists())
    .expect("unit installed");
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let out = output(
            Command::new("systemd-analyze").args(["verify", unit]),
            "systemd-analyze verify",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify {unit}:\n{stderr}"
        );
        let about_ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("mailgate.service"))
            .collect();
        assert!(about_ours.is_empty(), "{about_ours:#?}");
    } else {
        eprintln!("systemd-analyze not installed: unit not verified");
    }

    // remove keeps the configuration; purge removes it and the audit logs.
    dpkg_ok(&["--remove", "mailgate"]);
    assert!(!Path::new("/usr/bin/mailgate").exists());
    assert!(Path::new("/etc/mailgate/mailgate.toml").exists());
    dpkg_ok(&["--purge", "mailgate"]);
    for gone in [
        "/etc/mailgate",
        "/var/log/mailgate",
        "/etc/logrotate.d/mailgate",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
}
