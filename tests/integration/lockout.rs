//! Smart lockout (issue 10) through mailgate to a real Dovecot: attempts reserved before the
//! upstream is asked, familiar sources kept apart from an attacker's, a stale password counted
//! once, OAuth not locked by password failures, `[limits]` applied on reload, the SASL
//! authorization identity refused, and the helpdesk's `mailgate throttle` commands.
//!
//! Two loopback addresses play two places: 127.0.0.1 is the user's usual one (familiar after
//! a successful login), 127.0.0.2 the attacker's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailgate::admin::Readiness;
use mailgate::audit::Audit;
use mailgate::config::reload::Outcome;
use mailgate::metrics::Metrics;
use mailgate::server::Services;

use crate::dovecot::{Dovecot, User};
use crate::idp::{Idp, TokenKind};
use crate::mailgate::{Mailgate, MailgateBuilder};
use crate::util::{TcpLineClient, json_output, run_python};

const FAMILIAR: &str = "127.0.0.1";
const ATTACKER: &str = "127.0.0.2";

/// mailgate with an audit file, so a test can count what reached the upstream.
struct Audited {
    mailgate: Mailgate,
    file: PathBuf,
    _writer: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Audited {
    async fn start(builder: MailgateBuilder) -> Audited {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("audit.jsonl");
        let (audit, writer) = Audit::to_file(&file, 4096).expect("audit sink");
        let writer = tokio::spawn(writer.run());
        let services = Services {
            audit,
            metrics: Arc::new(Metrics::new()),
            readiness: Readiness::new(),
        };
        let mailgate = builder.start_with(services).await;
        Audited {
            mailgate,
            file,
            _writer: writer,
            _dir: dir,
        }
    }

    /// The `reason` of every `auth` record so far.
    async fn reasons(&self) -> Vec<String> {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.mailgate.services.audit.flush(),
        )
        .await
        .expect("audit flush within 10 s");
        std::fs::read_to_string(&self.file)
            .expect("read audit")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit json"))
            .filter(|r| r["event"] == "auth")
            .map(|r| r["reason"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

fn count(reasons: &[String], reason: &str) -> usize {
    reasons.iter().filter(|r| *r == reason).count()
}

/// imaplib through the plain IMAP listener, from `source`; the JSON it prints.
async fn imap(mailgate: &Mailgate, source: &str, args: &[&str]) -> serde_json::Value {
    let port = mailgate.addr("imap-plain").port().to_string();
    let mut all = vec![
        "--port", &port, "--tls", "none", "--source", source, "--mode", "login",
    ];
    all.extend_from_slice(args);
    json_output(&run_python("imap_client.py", &all).await)
}

async fn login_ok(mailgate: &Mailgate, source: &str, user: &str, password: &str) -> bool {
    let out = imap(mailgate, source, &["--user", user, "--password", password]).await;
    out["ok"] == true
}

#[tokio::test]
async fn concurrent_wrong_passwords_reach_the_upstream_at_most_the_limit() {
    let dovecot = Dovecot::start();
    let rig = Audited::start(Mailgate::builder(&dovecot).limits(
        "login_failures_per_user = 10\nlogin_failures_per_ip = 1000\nmax_connections_per_ip = 0",
    ))
    .await;
    let addr = rig.mailgate.addr("imap-plain");
    // 100 connections greeted first, then all LOGINs at once: the race of issue 10 item 2.
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut c = TcpLineClient::connect(addr).await;
        c.read_line().await;
        clients.push(c);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(n, mut c)| {
            tokio::spawn(async move {
                c.command(&format!("a LOGIN bob@example.com wrong{n}"))
                    .await
            })
        })
        .collect();
    for t in tasks {
        let reply = t.await.expect("task");
        assert!(reply.starts_with("a NO"), "{reply}");
    }
    let reasons = rig.reasons().await;
    assert_eq!(reasons.len(), 100, "{reasons:?}");
    let reached = count(&reasons, "upstream_rejected");
    eprintln!("100 concurrent wrong passwords: {reached} reached Dovecot");
    assert!(
        reached <= 10,
        "{reached} attempts reached Dovecot: {reasons:?}"
    );
    assert_eq!(count(&reasons, "rate_limited"), 100 - reached);
}

#[tokio::test]
async fn a_burst_of_correct_logins_above_the_limit_is_served() {
    // Reservations must not turn a user's own burst (several devices, a client opening many
    // connections) into refusals: an attempt waits for a slot held by attempts in flight.
    let dovecot = Dovecot::start();
    let rig =
        Audited::start(Mailgate::builder(&dovecot).limits("login_failures_per_user = 5")).await;
    let addr = rig.mailgate.addr("imap-plain");
    let mut clients = Vec::new();
    for _ in 0..30 {
        let mut c = TcpLineClient::connect(addr).await;
        c.read_line().await;
        clients.push(c);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move { c.command("a LOGIN alice@example.com alice-secret").await })
        })
        .collect();
    for t in tasks {
        let reply = t.await.expect("task");
        assert!(reply.starts_with("a OK"), "{reply}");
    }
    assert_eq!(count(&rig.reasons().await, "ok"), 30);
}

#[tokio::test]
async fn an_attacker_elsewhere_does_not_lock_out_the_users_usual_address() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot).start().await;
    let alice = dovecot.alice();
    // alice's usual place becomes familiar with a successful login.
    assert!(login_ok(&mailgate, FAMILIAR, &alice.name, &alice.password).await);
    // 50 wrong passwords from the attacker's address: every one refused.
    let out = imap(
        &mailgate,
        ATTACKER,
        &[
            "--user",
            &alice.name,
            "--password",
            "guess",
            "--vary-password",
            "--repeat",
            "50",
            "--expect-fail",
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    let refusals = out["refusals"].as_array().expect("refusals");
    assert!(
        refusals
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("[UNAVAILABLE]"))),
        "the attacker is rate limited at some point: {out}"
    );
    // Not even the right password opens the unfamiliar side now...
    assert!(!login_ok(&mailgate, "127.0.0.3", &alice.name, &alice.password).await);
    // ...but alice at her usual address logs in.
    assert!(login_ok(&mailgate, FAMILIAR, &alice.name, &alice.password).await);
}

#[tokio::test]
async fn a_stale_password_repeated_by_a_phone_counts_once() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits("login_failures_per_user = 3")
        .start()
        .await;
    let bob = dovecot.user("bob@example.com");
    let out = imap(
        &mailgate,
        FAMILIAR,
        &[
            "--user",
            &bob.name,
            "--password",
            "last-years-password",
            "--repeat",
            "30",
            "--expect-fail",
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    // Each refusal is the upstream's "wrong password", never "too many failures".
    for r in out["refusals"].as_array().expect("refusals") {
        assert!(
            r.as_str()
                .is_some_and(|r| r.contains("[AUTHENTICATIONFAILED]")),
            "{out}"
        );
    }
    assert!(login_ok(&mailgate, "127.0.0.3", &bob.name, &bob.password).await);
}

/// Dovecot with an OAuth2 passdb backed by `idp`'s introspection.
fn oauth_dovecot(idp: &Idp) -> Dovecot {
    let url = idp
        .introspection_endpoint
        .replacen("http://", "http://dovecot:dovecot-secret@", 1);
    Dovecot::builder()
        .users(vec![User::new("alice@example.com", "alice-secret")])
        .oauth2(&format!(
            "introspection_mode = post\nintrospection_url = {url}\nusername_attribute = sub\n\
             active_attribute = active\nactive_value = true\ntimeout_msecs = 5000\n"
        ))
        .start()
}

fn oauth_mailgate(dovecot: &Dovecot, idp: &Idp, limits: &str) -> MailgateBuilder {
    let mut builder = Mailgate::builder(dovecot);
    let secret = builder.files().join("client-secret");
    std::fs::write(&secret, "mailgate-secret").expect("write secret");
    builder.limits(limits).extra(&format!(
        "[[oauth.provider]]\nname = \"test-idp\"\nissuer = \"{}\"\n\
         introspection_endpoint = \"{}\"\nclient_id = \"mailgate\"\n\
         client_secret_file = \"{}\"\naudiences = [\"{}\", \"{}\"]\nrequest_timeout = \"2s\"\n",
        idp.issuer,
        idp.introspection_endpoint,
        secret.display(),
        crate::idp::JWT_AUDIENCE,
        crate::idp::OPAQUE_AUDIENCE,
    ))
}

async fn xoauth2(mailgate: &Mailgate, user: &str, token: &str) -> serde_json::Value {
    let token = format!("--token={token}");
    imap(
        mailgate,
        FAMILIAR,
        &["--user", user, "--auth", "xoauth2", &token],
    )
    .await
}

#[tokio::test]
async fn oauth_logins_are_not_locked_by_password_failures() {
    let idp = Idp::start().await;
    let dovecot = oauth_dovecot(&idp);
    let mailgate = oauth_mailgate(&dovecot, &idp, "login_failures_per_user = 2")
        .start()
        .await;
    let alice = "alice@example.com";
    for wrong in ["wrong1", "wrong2"] {
        assert!(!login_ok(&mailgate, FAMILIAR, alice, wrong).await);
    }
    // The password side is blocked now, even with the right password...
    let blocked = imap(
        &mailgate,
        FAMILIAR,
        &["--user", alice, "--password", "alice-secret"],
    )
    .await;
    assert!(
        blocked["error"]
            .as_str()
            .is_some_and(|e| e.contains("[UNAVAILABLE]")),
        "{blocked}"
    );
    // ...and the OAuth login still works.
    let token = idp.token(alice, "mail-app", TokenKind::Opaque).await;
    let out = xoauth2(&mailgate, alice, &token).await;
    assert_eq!(out["ok"], true, "{out}");
}

#[tokio::test]
async fn invalid_tokens_have_their_own_limit_per_source() {
    let idp = Idp::start().await;
    let dovecot = oauth_dovecot(&idp);
    let mailgate = oauth_mailgate(&dovecot, &idp, "token_failures_per_ip = 2")
        .start()
        .await;
    let alice = "alice@example.com";
    for _ in 0..2 {
        let out = xoauth2(&mailgate, alice, "not-a-token").await;
        assert!(
            out["error"]
                .as_str()
                .is_some_and(|e| e.contains("[AUTHENTICATIONFAILED]")),
            "{out}"
        );
    }
    // The source's token logins are blocked, a good token included...
    let token = idp.token(alice, "mail-app", TokenKind::Opaque).await;
    let out = xoauth2(&mailgate, alice, &token).await;
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("[UNAVAILABLE]")),
        "{out}"
    );
    // ...but not its password logins.
    assert!(login_ok(&mailgate, FAMILIAR, alice, "alice-secret").await);
}

#[tokio::test]
async fn a_reload_that_lowers_a_limit_applies_to_the_next_attempt() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mailgate.toml");
    let (mailgate, mut outcomes) = Mailgate::builder(&dovecot)
        .limits("login_failures_per_user = 10")
        .start_watching(&path)
        .await;
    let addr = mailgate.addr("imap-plain");
    for n in 0..2 {
        let mut imap = TcpLineClient::connect(addr).await;
        imap.read_line().await;
        let reply = imap
            .command(&format!("a LOGIN bob@example.com wrong{n}"))
            .await;
        assert!(reply.contains("[AUTHENTICATIONFAILED]"), "{reply}");
    }
    let lower = Mailgate::builder(&dovecot)
        .limits("login_failures_per_user = 2")
        .toml();
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, lower).expect("write");
    std::fs::rename(&aside, &path).expect("rename");
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
        .await
        .expect("a reload within 10 s")
        .expect("watcher running");
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    // The two failures counted before the reload reach the new limit of 2.
    let mut imap = TcpLineClient::connect(addr).await;
    imap.read_line().await;
    let reply = imap.command("b LOGIN bob@example.com bob-secret").await;
    assert!(reply.starts_with("b NO [UNAVAILABLE]"), "{reply}");
}

/// bob may log in; alice is suspended. Dovecot knows `admin@example.com` as a master user
/// (SASL PLAIN authzid = the account to open), as many real deployments do.
const MASTER_DIRECTORY: &str = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
pop = true
imap = true
imap_clients = "all"
password_logins = true
[[user]]
email = "alice@example.com"
ou = "/"
suspended = true
[[user]]
email = "bob@example.com"
ou = "/"
"#;

#[tokio::test]
async fn a_sasl_authorization_identity_is_refused_before_the_upstream() {
    let masters = tempfile::tempdir().expect("tempdir");
    let file = masters.path().join("master-users");
    std::fs::write(&file, "bob@example.com:{PLAIN}bob-secret\n").expect("write");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(masters.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let dovecot = Dovecot::builder()
        .extra_config(&format!(
            "passdb {{\n  driver = passwd-file\n  master = yes\n  args = {}\n}}\n",
            file.display()
        ))
        .start();
    let rig = Audited::start(Mailgate::builder(&dovecot).policy(MASTER_DIRECTORY, "")).await;
    let mailgate = &rig.mailgate;
    // bob (allowed) asks to be alice (suspended). Dovecot would honour it: the policy, which
    // looked at bob, would have let alice's mailbox open.
    let out = imap(
        mailgate,
        FAMILIAR,
        &[
            "--user",
            "bob@example.com",
            "--password",
            "bob-secret",
            "--auth",
            "plain",
            "--authzid",
            "alice@example.com",
            "--expect-fail",
        ],
    )
    .await;
    assert_eq!(out["refused"], true, "{out}");
    // The generic answer of a wrong password: it does not confirm that alice exists.
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("[AUTHENTICATIONFAILED] Authentication failed")),
        "{out}"
    );
    // The same identity twice is no request for another mailbox.
    let out = imap(
        mailgate,
        FAMILIAR,
        &[
            "--user",
            "bob@example.com",
            "--password",
            "bob-secret",
            "--auth",
            "plain",
            "--authzid",
            "bob@example.com",
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    let reasons = rig.reasons().await;
    assert_eq!(reasons, ["mailbox_not_assigned", "ok"], "{reasons:?}");
    assert!(!dovecot.log().contains("alice"), "{}", dovecot.log());
}

/// `mailgate throttle …` against the running binary; its stdout (exit 0 asserted).
async fn throttle_cli(config: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailgate"));
    cmd.arg("throttle").args(args).arg("--config").arg(config);
    let out = crate::util::run_client(cmd, Duration::from_secs(15)).await;
    assert!(
        out.status.success(),
        "mailgate throttle {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_helpdesk_sees_and_clears_a_lockout_through_the_admin_listener() {
    use std::io::BufRead as _;

    use crate::reload::{KillOnDrop, wait_for};
    use crate::util::{free_port, run_curl};

    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailgate.toml");
    let admin = format!("127.0.0.1:{}", free_port());
    let toml = Mailgate::builder(&dovecot)
        .limits("login_failures_per_user = 3")
        .extra(&format!("[admin]\nbind = \"{admin}\"\n"))
        .toml();
    std::fs::write(&config, toml).expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mailgate");
    let guard = KillOnDrop(child.id());
    let stderr = child.stderr.take().expect("stderr");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let listening = wait_for(&mut lines, "listener=imap-plain").await;
    let port = listening
        .rsplit(':')
        .next()
        .and_then(|p| p.split_whitespace().next())
        .unwrap_or_else(|| panic!("no port in {listening:?}"))
        .to_owned();
    let login = |source: &'static str, password: &'static str, port: String| async move {
        let out = run_python(
            "imap_client.py",
            &[
                "--port",
                &port,
                "--tls",
                "none",
                "--source",
                source,
                "--mode",
                "login",
                "--user",
                "alice@example.com",
                "--password",
                password,
            ],
        )
        .await;
        json_output(&out)["ok"] == true
    };
    assert!(login(FAMILIAR, "alice-secret", port.clone()).await);
    for guess in ["a", "b", "c"] {
        assert!(!login(ATTACKER, guess, port.clone()).await);
    }
    assert!(!login(ATTACKER, "alice-secret", port.clone()).await);

    let status: serde_json::Value = serde_json::from_str(
        &throttle_cli(
            &config,
            &["status", "--user", "ALICE@example.com", "--ip", ATTACKER],
        )
        .await,
    )
    .expect("status is JSON");
    let user = &status["user"];
    assert!(
        user["unfamiliar"]["blocked_until"].is_string(),
        "{status:#}"
    );
    assert!(user["familiar"]["blocked_until"].is_null(), "{status:#}");
    assert_eq!(
        user["familiar_sources"][0]["source"], FAMILIAR,
        "{status:#}"
    );
    assert_eq!(user["remembered_wrong_passwords"], 3, "{status:#}");
    assert_eq!(status["source"]["password"]["failures"], 3, "{status:#}");

    let cleared = throttle_cli(&config, &["clear", "--user", "alice@example.com"]).await;
    assert!(cleared.contains("\"cleared\": true"), "{cleared}");
    assert!(login(ATTACKER, "alice-secret", port.clone()).await);

    // Only from loopback, with a loopback Host, and a POST only with the header.
    let url = format!("http://{admin}/throttle?user=alice%40example.com");
    let forged = run_curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: evil.example",
        &url,
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&forged.stdout), "403");
    let clear = format!("http://{admin}/throttle/clear?ip=127.0.0.2");
    let post = run_curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &clear,
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&post.stdout), "403");
    let no_secret = run_curl(&["-s", &url]).await;
    assert!(!String::from_utf8_lossy(&no_secret.stdout).contains("alice-secret"));
    drop(guard);
    let _ = child.wait();
}
