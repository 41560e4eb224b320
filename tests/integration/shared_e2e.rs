//! Shared mailboxes behind one OAuth grant (issue 11), end to end with real things: the test
//! IdP (oidc-provider) issues the grant through the device flow, which the test drives over
//! HTTP as the administrator's browser would; `mailgate grant authorize` (the real binary)
//! stores it; a real Dovecot holds office@contoso.com and checks the grant's access tokens with
//! its oauth2 passdb (introspection at the IdP); imaplib and poplib read the mailbox through
//! mailgate.
//!
//! The IdP gives grant access tokens a 2-second life (`/test/config?grant_ttl=2`), so the
//! tests wait past it to force refreshes: expiry is time itself, there is no event to wait on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::dovecot::{Dovecot, User};
use crate::idp::{Idp, JWT_AUDIENCE, OPAQUE_AUDIENCE, TokenKind};
use crate::mailgate::{Mailgate, MailgateBuilder, captured_logs};
use crate::ops_e2e::{audit_to, await_records};
use crate::util::{TcpLineClient, assert_same_messages, assert_success, json_output, run_python};

const OFFICE: &str = "office@contoso.com";
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
/// Routed by the directory to the old mail server (`upstream = "old-imap"`).
const DAVE: &str = "dave@example.com";
/// Grant access tokens live this long at the IdP, so refreshes happen mid-test.
const GRANT_TTL: u64 = 2;
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// alice is assigned directly; carol through crm@ ⊃ team@ (nested); bob is not assigned.
const DIRECTORY: &str = r#"
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
[[user]]
email = "bob@example.com"
ou = "/"
[[user]]
email = "carol@example.com"
ou = "/"
[[group]]
email = "team@example.com"
members = ["carol@example.com"]
[[group]]
email = "crm@example.com"
members = ["team@example.com"]
[[shared_mailbox]]
address = "office@contoso.com"
upstream = ["provider-imap", "provider-pop3"]
grant = "office"
assigned = ["alice@example.com", "crm@example.com"]
"#;

/// The provider: one Dovecot with the users' own mailboxes and office@contoso.com, whose
/// password nobody here knows; XOAUTH2 is checked by introspecting at the IdP.
fn dovecot(idp: &Idp) -> Dovecot {
    let url = idp
        .introspection_endpoint
        .replacen("http://", "http://dovecot:dovecot-secret@", 1);
    Dovecot::builder()
        .users(vec![
            User::new(ALICE, "alice-secret"),
            User::new(BOB, "bob-secret"),
            User::new(CAROL, "carol-secret"),
            User::new(OFFICE, "nobody-knows-this-0f1c3"),
        ])
        .oauth2(&format!(
            "introspection_mode = post\nintrospection_url = {url}\nusername_attribute = sub\n\
             active_attribute = active\nactive_value = true\ntimeout_msecs = 5000\n"
        ))
        .start()
}

struct Setup {
    idp: Idp,
    dovecot: Dovecot,
    /// The old mail server dave's own mailbox (and password) lives on, when the test routes.
    old: Option<Dovecot>,
    config: PathBuf,
    /// Holds the directory and secret files the config file names.
    _cli: MailgateBuilder,
    grants: PathBuf,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

fn builder(dovecot: &Dovecot, idp: &Idp, grants: &Path, old: Option<&Dovecot>) -> MailgateBuilder {
    let mut b = Mailgate::builder(dovecot);
    // With an old server: dave is routed there and assigned to office@ too.
    let (directory, old_upstream) = match old {
        None => (DIRECTORY.to_owned(), String::new()),
        Some(old) => (
            DIRECTORY
                .replace(
                    "[[shared_mailbox]]",
                    &format!(
                        "[[user]]\nemail = \"{DAVE}\"\nou = \"/\"\nupstream = \"old-imap\"\n\
                     [[shared_mailbox]]"
                    ),
                )
                .replace(
                    "assigned = [\"alice@example.com\",",
                    &format!("assigned = [\"{DAVE}\", \"alice@example.com\","),
                ),
            format!(
                "[[upstream]]\nname = \"old-imap\"\nprotocol = \"imap\"\naddresses = [\"{}\"]\n\
                 tls = \"implicit\"\nserver_name = \"localhost\"\nca_file = \"{}\"\n\n",
                old.imaps_addr,
                old.ca_pem.display()
            ),
        ),
    };
    let files = b.files();
    std::fs::write(files.join("client-secret"), "mailgate-secret").expect("secret");
    std::fs::write(files.join("grants-secret"), "grants-secret").expect("secret");
    let issuer = &idp.issuer;
    let (imaps, pop3, ca) = (
        dovecot.imaps_addr,
        dovecot.pop3_addr,
        dovecot.ca_pem.display(),
    );
    b.policy(&directory, "")
        .limits("max_connections_per_ip = 200\nmax_handshakes_per_ip = 200")
        .extra(&format!(
            "{old_upstream}[[upstream]]\nname = \"provider-imap\"\nprotocol = \"imap\"\naddresses = [\"{imaps}\"]\n\
             tls = \"implicit\"\nserver_name = \"localhost\"\nca_file = \"{ca}\"\n\n\
             [[upstream]]\nname = \"provider-pop3\"\nprotocol = \"pop3\"\naddresses = [\"{pop3}\"]\n\
             tls = \"starttls\"\nserver_name = \"localhost\"\nca_file = \"{ca}\"\n\n\
             [[oauth.provider]]\nname = \"test-idp\"\nissuer = \"{issuer}\"\n\
             introspection_endpoint = \"{}\"\nclient_id = \"mailgate\"\n\
             client_secret_file = \"{}\"\naudiences = [\"{JWT_AUDIENCE}\", \"{OPAQUE_AUDIENCE}\"]\n\n\
             [[oauth.client]]\nname = \"test-idp\"\nclient_id = \"mailgate-grants\"\n\
             client_secret_file = \"{}\"\ntoken_endpoint = \"{issuer}/token\"\n\
             device_authorization_endpoint = \"{issuer}/device/auth\"\n\
             authorization_endpoint = \"{issuer}/auth\"\n\
             revocation_endpoint = \"{issuer}/token/revocation\"\n\
             scopes = [\"openid\", \"offline_access\", \"mail\"]\n\n\
             [grants]\ndir = \"{}\"\nretry_after = \"1s\"\n",
            idp.introspection_endpoint,
            files.join("client-secret").display(),
            files.join("grants-secret").display(),
            grants.display(),
        ))
}

async fn setup() -> Setup {
    setup_with(None).await
}

async fn setup_with(old: Option<Dovecot>) -> Setup {
    let idp = Idp::start().await;
    let dovecot = dovecot(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let grants = dir.path().join("grants");
    let config = dir.path().join("mailgate.toml");
    let audit = dir.path().join("audit.log");
    let cli = builder(&dovecot, &idp, &grants, old.as_ref());
    std::fs::write(&config, cli.toml()).expect("write config");
    idp_post(&idp, &format!("/test/config?grant_ttl={GRANT_TTL}")).await;
    Setup {
        idp,
        dovecot,
        old,
        config,
        _cli: cli,
        grants,
        audit,
        _dir: dir,
    }
}

async fn idp_post(idp: &Idp, path: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", idp.issuer))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("idp request");
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// POST requests to the IdP's token endpoint so far.
async fn token_requests(idp: &Idp) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{}/test/count", idp.issuer))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("count")
        .text()
        .await
        .expect("body");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["token"].as_u64().expect("count")
}

/// `mailgate grant authorize office`, approved at the IdP as office@ once it shows the code.
/// Returns its stdout.
async fn authorize(s: &Setup) -> String {
    let mut child = spawn_authorize(s, &[]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut out = String::new();
    let code = tokio::time::timeout(CLI_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            out.push_str(&line);
            out.push('\n');
            if let Some((_, code)) = line.split_once("enter the code ") {
                return Some(code.trim().to_owned());
            }
        }
        None
    })
    .await
    .expect("user code within the timeout");
    let Some(code) = code else {
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use tokio::io::AsyncReadExt as _;
            let _ = stderr.read_to_string(&mut err).await;
        }
        panic!("no user code in:\n{out}\nstderr:\n{err}");
    };
    idp_post(
        &s.idp,
        &format!("/test/device/approve?user_code={code}&account={OFFICE}"),
    )
    .await;
    let rest = tokio::time::timeout(CLI_TIMEOUT, async {
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.expect("read") {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
    .await
    .expect("authorize finishes");
    out.push_str(&rest);
    let status = tokio::time::timeout(CLI_TIMEOUT, child.wait())
        .await
        .expect("exit")
        .expect("status");
    assert!(status.success(), "grant authorize failed:\n{out}");
    out
}

/// mailgate in-process with the same settings as the config file the CLI reads (its own
/// copies of the secret files), auditing to `s.audit`.
async fn start(s: &Setup) -> Mailgate {
    let services = audit_to(&s.audit);
    builder(&s.dovecot, &s.idp, &s.grants, s.old.as_ref())
        .start_with(services)
        .await
}

fn grant_file(s: &Setup) -> Value {
    let text = std::fs::read_to_string(s.grants.join("office.json")).expect("grant file");
    serde_json::from_str(&text).expect("grant json")
}

async fn imap_fetch(mailgate: &Mailgate, args: &[&str]) -> Value {
    let port = mailgate.addr("imap-plain").port().to_string();
    let mut all = vec!["--port", &port, "--tls", "none"];
    all.extend_from_slice(args);
    let out = run_python("imap_client.py", &all).await;
    assert_success(&out);
    json_output(&out)
}

async fn pop3_retr(mailgate: &Mailgate, args: &[&str]) -> Value {
    let port = mailgate.addr("pop3-plain").port().to_string();
    let mut all = vec!["--port", &port, "--tls", "none"];
    all.extend_from_slice(args);
    let out = run_python("pop3_client.py", &all).await;
    assert_success(&out);
    json_output(&out)
}

/// One raw IMAP LOGIN; the tagged answer with its `(ref …)` cut off.
async fn imap_login(mailgate: &Mailgate, user: &str, password: &str) -> String {
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let answer = imap
        .imap("a", &format!("LOGIN \"{user}\" \"{password}\""))
        .await;
    strip_ref(&answer.tagged)
}

fn strip_ref(line: &str) -> String {
    match line.rfind(" (ref ") {
        Some(i) => line[..i].to_owned(),
        None => line.trim_end().to_owned(),
    }
}

fn xoauth2(user: &str, token: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

/// The audit `auth` records of shared-mailbox logins.
fn shared_auths(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["event"] == "auth" && r["mailbox"] == OFFICE)
        .collect()
}

#[tokio::test]
async fn assigned_users_read_the_shared_mailbox_through_one_grant() {
    let s = setup().await;
    let before = token_requests(&s.idp).await;
    let shown = authorize(&s).await;
    assert!(shown.contains("office@contoso.com"), "{shown}");
    let grant = grant_file(&s);
    assert_eq!(grant["state"], "active");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.grants.join("office.json"))
            .expect("grant file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the grant file is 0600");
    let first_refresh = grant["refresh_token"].as_str().expect("rt").to_owned();
    let mut refresh_tokens = vec![first_refresh.clone()];

    let mailgate = start(&s).await;
    let expected = s.dovecot.messages(OFFICE);

    // alice, password proven by her own upstream, `mailbox*user`: imaplib reads office@.
    let asked = format!("{OFFICE}*{ALICE}");
    let json = imap_fetch(&mailgate, &["--user", &asked, "--password", "alice-secret"]).await;
    assert_same_messages(&expected, &json);
    // alice again, SASL PLAIN with authzid = the mailbox.
    let json = imap_fetch(
        &mailgate,
        &[
            "--user",
            ALICE,
            "--password",
            "alice-secret",
            "--auth",
            "plain",
            "--authzid",
            OFFICE,
        ],
    )
    .await;
    assert_same_messages(&expected, &json);
    // alice over POP3 (poplib), USER office*alice.
    let json = pop3_retr(&mailgate, &["--user", &asked, "--password", "alice-secret"]).await;
    assert_same_messages(&expected, &json);

    // carol, assigned through crm@ ⊃ team@, with her own token and `user=office@`.
    let carol = s.idp.token(CAROL, "mail-app", TokenKind::Jwt).await;
    let token_arg = format!("--token={carol}");
    let json = imap_fetch(
        &mailgate,
        &["--user", OFFICE, "--auth", "xoauth2", &token_arg],
    )
    .await;
    assert_same_messages(&expected, &json);
    let json = pop3_retr(
        &mailgate,
        &["--user", OFFICE, "--auth", "xoauth2", &token_arg],
    )
    .await;
    assert_same_messages(&expected, &json);
    // One token request so far for mailgate's logins: the first refresh; the rest used the
    // cached access token.
    let after_device = token_requests(&s.idp).await;

    // bob is not assigned: the very answer a wrong password gets, nothing about office@.
    let refused = imap_login(&mailgate, &format!("{OFFICE}*{BOB}"), "bob-secret").await;
    let wrong = imap_login(&mailgate, BOB, "not-bobs-password").await;
    assert_eq!(refused, wrong, "unassigned must read like a wrong password");
    assert!(
        refused.starts_with("a NO [AUTHENTICATIONFAILED]"),
        "{refused}"
    );
    assert!(!refused.contains("office"), "{refused}");
    // alice with a wrong password for the mailbox: the same answer.
    let wrong_alice = imap_login(&mailgate, &asked, "not-alices-password").await;
    assert_eq!(wrong_alice, wrong);

    // The access token expires (2 s at the IdP): the next login refreshes, and the rotated
    // refresh token is on disk.
    tokio::time::sleep(Duration::from_secs(GRANT_TTL) + Duration::from_millis(200)).await;
    let json = imap_fetch(&mailgate, &["--user", &asked, "--password", "alice-secret"]).await;
    assert_same_messages(&expected, &json);
    assert_eq!(
        token_requests(&s.idp).await,
        after_device + 1,
        "one refresh"
    );
    let grant = grant_file(&s);
    let rotated = grant["refresh_token"].as_str().expect("rt").to_owned();
    assert_ne!(
        rotated, first_refresh,
        "the IdP rotates; mailgate kept the new one"
    );
    assert!(grant["last_refresh"].is_string());
    refresh_tokens.push(rotated.clone());

    // A restart between refreshes: the new process has only the file, and the rotated token in
    // it works (the first one is spent: the IdP would refuse it).
    drop(mailgate);
    let mailgate = start(&s).await;
    let json = imap_fetch(
        &mailgate,
        &["--user", OFFICE, "--auth", "xoauth2", &token_arg],
    )
    .await;
    assert_same_messages(&expected, &json);
    refresh_tokens.push(
        grant_file(&s)["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned(),
    );

    // The audit answers "who read office@": both identities on every shared login.
    let all = await_records(&mailgate.services.audit, &s.audit, |r| {
        shared_auths(r).iter().any(|a| a["user"] == CAROL)
    })
    .await;
    let shared = shared_auths(&all);
    assert!(
        shared
            .iter()
            .any(|a| a["user"] == CAROL && a["decision"] == "allow" && a["grant"] == "office"),
        "{shared:#?}"
    );
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args([
            "audit",
            "tail",
            "--json",
            "--mailbox",
            OFFICE,
            "--decision",
            "allow",
            "--file",
        ])
        .arg(&s.audit)
        .output()
        .expect("audit tail");
    let text = String::from_utf8_lossy(&tail.stdout);
    assert!(text.contains(CAROL), "{text}");
    for line in text.lines().filter(|l| l.contains("\"event\":\"auth\"")) {
        assert!(
            line.contains(&format!("\"mailbox\":\"{OFFICE}\"")),
            "{line}"
        );
    }
    let explain = std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(["explain", CAROL, "--protocol", "imap", "--config"])
        .arg(&s.config)
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.contains(
            "shared     office@contoso.com assigned via group:crm@example.com via \
             group:team@example.com (grant office, protocols: any protocol): opens when the login \
             above is allowed"
        ),
        "{text}"
    );

    // No secret anywhere: refresh tokens, the client secret, carol's token, alice's password.
    let audit = std::fs::read_to_string(&s.audit).expect("audit");
    let logs = captured_logs();
    let config = mailgate::config::Config::load(&s.config).expect("config");
    let debug = format!("{config:?}");
    for secret in refresh_tokens.iter().map(String::as_str).chain([
        "grants-secret",
        carol.as_str(),
        "alice-secret",
    ]) {
        assert!(!audit.contains(secret), "a secret in the audit log");
        assert!(!logs.contains(secret), "a secret in the logs");
        assert!(!debug.contains(secret), "a secret in the config's Debug");
        assert!(
            !shown.contains(secret),
            "a secret in grant authorize's output"
        );
    }
    assert!(before < after_device);
}

#[tokio::test]
async fn one_refresh_for_fifty_logins_revocation_and_reauthorisation() {
    let s = setup().await;
    authorize(&s).await;
    let mailgate = start(&s).await;
    let carol = s.idp.token(CAROL, "mail-app", TokenKind::Jwt).await;

    // 50 concurrent logins with an expired (here: never fetched) access token: one refresh.
    let before = token_requests(&s.idp).await;
    all_open(vec![mailgate.addr("imap-plain"); 50], &carol).await;
    assert_eq!(
        token_requests(&s.idp).await,
        before + 1,
        "50 logins, one token request"
    );

    // The administrator's consent is revoked at the IdP (RFC 7009, as the provider's portal
    // does it): the grant is dead.
    let rt = grant_file(&s)["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    let resp = reqwest::Client::new()
        .post(format!("{}/token/revocation", s.idp.issuer))
        .basic_auth("mailgate-grants", Some("grants-secret"))
        .form(&[("token", rt.as_str()), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .expect("revoke");
    assert!(resp.status().is_success());
    let asked = format!("{OFFICE}*{ALICE}");
    let first = imap_login(&mailgate, &asked, "alice-secret").await;
    assert_eq!(
        first,
        "a NO [UNAVAILABLE] The shared mailbox office@contoso.com must be re-authorised by an \
         administrator"
    );
    let requests = token_requests(&s.idp).await;
    // Again, and over POP3: the same answer, and the IdP is not asked again.
    assert_eq!(imap_login(&mailgate, &asked, "alice-secret").await, first);
    let mut pop = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop.read_line().await;
    pop.command(&format!("USER {asked}")).await;
    let reply = strip_ref(&pop.command("PASS alice-secret").await);
    assert_eq!(
        reply,
        "-ERR [SYS/TEMP] The shared mailbox office@contoso.com must be re-authorised by an \
         administrator"
    );
    assert_eq!(
        token_requests(&s.idp).await,
        requests,
        "a dead grant is not hammered"
    );
    assert_eq!(grant_file(&s)["state"], "needs_reauthorization");

    // Re-authorised while mailgate runs: the next login works, no restart.
    authorize(&s).await;
    let json = imap_fetch(&mailgate, &["--user", &asked, "--password", "alice-secret"]).await;
    assert_same_messages(&s.dovecot.messages(OFFICE), &json);

    // `mailgate grant revoke`: at the IdP and here; the next login is refused at once, though
    // the access token mailgate holds would still be valid for a moment.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(["grant", "revoke", "office", "--config"])
        .arg(&s.config)
        .output()
        .expect("grant revoke");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Revoked at the provider."), "{text}");
    assert!(!s.grants.join("office.json").exists());
    assert_eq!(imap_login(&mailgate, &asked, "alice-secret").await, first);

    // One `grant` record per change, not one per refused login.
    let all = await_records(&mailgate.services.audit, &s.audit, |r| {
        shared_auths(r)
            .iter()
            .filter(|a| a["reason"] == "grant_unavailable")
            .count()
            >= 4
    })
    .await;
    let changes: Vec<&Value> = all.iter().filter(|r| r["event"] == "grant").collect();
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(changes[0]["state"], "needs_reauthorization");
    assert_eq!(changes[0]["detail"], "invalid_grant");
    let refused: Vec<&Value> = shared_auths(&all)
        .into_iter()
        .filter(|a| a["reason"] == "grant_unavailable")
        .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    let metrics = mailgate.services.metrics.encode();
    assert!(
        metrics.contains("mailgate_grant_events_total{result=\"needs_reauthorization\"} 1"),
        "{metrics}"
    );
}

/// The provider is down (its token endpoint answers 503): a temporary failure with the generic
/// text, never a login as anyone else, the grant stays active (the provider did not say it is
/// dead), and within `retry_after` the provider is not asked again.
///
/// A hand-written token endpoint: the test IdP cannot be made to fail on demand. It counts the
/// connections it gets and answers each with a 503.
#[tokio::test]
async fn provider_down_is_a_temporary_failure_and_not_hammered() {
    let dovecot = Dovecot::builder()
        .users(vec![
            User::new(ALICE, "alice-secret"),
            User::new(OFFICE, "x-unknown-9"),
        ])
        .start();
    let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = endpoint.local_addr().expect("addr").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut tcp, _)) = endpoint.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let grants = dir.path().join("grants");
    mailgate::grants::GrantFile {
        name: "office".into(),
        client: "down".into(),
        refresh_token: mailgate::secret::Secret::new("rt-never-used-0c7e".into()),
        scopes: vec!["mail".into()],
        obtained: mailgate::grants::file::now_rfc3339(),
        last_refresh: None,
        state: mailgate::grants::GrantState::Active,
        detail: None,
    }
    .write(&grants)
    .expect("grant file");
    let (imaps, pop3, ca) = (
        dovecot.imaps_addr,
        dovecot.pop3_addr,
        dovecot.ca_pem.display(),
    );
    let audit = dir.path().join("audit.log");
    let mailgate = Mailgate::builder(&dovecot)
        .policy(DIRECTORY, "")
        .extra(&format!(
            "[[upstream]]\nname = \"provider-imap\"\nprotocol = \"imap\"\naddresses = [\"{imaps}\"]\n\
             tls = \"implicit\"\nserver_name = \"localhost\"\nca_file = \"{ca}\"\n\n\
             [[upstream]]\nname = \"provider-pop3\"\nprotocol = \"pop3\"\naddresses = [\"{pop3}\"]\n\
             tls = \"starttls\"\nserver_name = \"localhost\"\nca_file = \"{ca}\"\n\n\
             [[oauth.client]]\nname = \"down\"\nclient_id = \"mailgate-grants\"\n\
             token_endpoint = \"http://127.0.0.1:{port}/token\"\n\
             device_authorization_endpoint = \"http://127.0.0.1:{port}/device\"\n\
             request_timeout = \"2s\"\n\n[grants]\ndir = \"{}\"\nretry_after = \"1m\"\n",
            grants.display()
        ))
        .start_with(audit_to(&audit))
        .await;
    let asked = format!("{OFFICE}*{ALICE}");
    for _ in 0..3 {
        assert_eq!(
            imap_login(&mailgate, &asked, "alice-secret").await,
            "a NO [UNAVAILABLE] Mail service temporarily unavailable, try again later"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one request, then retry_after"
    );
    let text = std::fs::read_to_string(grants.join("office.json")).expect("grant");
    assert!(text.contains("\"state\": \"active\""), "{text}");
    let all = await_records(&mailgate.services.audit, &audit, |r| {
        shared_auths(r).len() >= 3
    })
    .await;
    assert!(
        shared_auths(&all)
            .iter()
            .all(|a| a["reason"] == "grant_unavailable" && a["user"] == ALICE)
    );
    assert!(
        !all.iter().any(|r| r["event"] == "grant"),
        "not a state change"
    );
    let metrics = mailgate.services.metrics.encode();
    assert!(
        metrics.contains("mailgate_grant_events_total{result=\"refresh_failed\"} 1"),
        "{metrics}"
    );
}

/// `mailgate grant authorize --redirect`: authorization code + PKCE over a loopback redirect.
/// The test plays the browser: it reads the printed URL, has the IdP sign in as office@ and
/// consent (`/test/authorize`), and follows the redirect to mailgate's loopback listener; the
/// IdP's token endpoint checks the PKCE verifier. Then the grant opens the mailbox.
#[tokio::test]
async fn authorize_with_code_and_pkce_over_a_loopback_redirect() {
    let s = setup().await;

    // A redirect whose state is not the one mailgate sent (a forged or stale one) ends the
    // command with an error, and no grant is written.
    let (child, params) = authorize_redirect(&s).await;
    let uri = &params["redirect_uri"];
    let forged = reqwest::get(format!("{uri}?code=forged&state=not-the-state"))
        .await
        .expect("callback");
    assert!(forged.status().is_success());
    let out = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("exit")
        .expect("output");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state does not match"),
        "{out:?}"
    );
    assert!(!s.grants.join("office.json").exists());

    let (child, params) = authorize_redirect(&s).await;
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["response_type"], "code");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut query: Vec<(&str, &str)> = [
        "client_id",
        "redirect_uri",
        "code_challenge",
        "code_challenge_method",
        "state",
    ]
    .iter()
    .map(|k| (*k, params[*k].as_str()))
    .collect();
    query.push(("account", OFFICE));
    let redirect = http
        .get(format!("{}/test/authorize", s.idp.issuer))
        .query(&query)
        .send()
        .await
        .expect("authorize")
        .text()
        .await
        .expect("redirect");
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    let page = http.get(&redirect).send().await.expect("callback");
    assert!(page.status().is_success());
    let out = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("exit")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(grant_file(&s)["state"], "active");
    let mailgate = start(&s).await;
    let asked = format!("{OFFICE}*{ALICE}");
    let json = imap_fetch(&mailgate, &["--user", &asked, "--password", "alice-secret"]).await;
    assert_same_messages(&s.dovecot.messages(OFFICE), &json);
}

/// Starts `mailgate grant authorize office --redirect` and returns it with the query of the
/// authorization URL it printed.
async fn authorize_redirect(
    s: &Setup,
) -> (
    tokio::process::Child,
    std::collections::HashMap<String, String>,
) {
    let mut child = spawn_authorize(s, &["--redirect"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let prefix = format!("{}/auth?", s.idp.issuer);
    let url = tokio::time::timeout(CLI_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(url) = line.trim().strip_prefix(&prefix) {
                return url.to_owned();
            }
        }
        panic!("no authorization URL printed");
    })
    .await
    .expect("URL in time");
    // The rest of stdout is not read: keep the pipe open without blocking the command.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let params = form_urlencoded::parse(url.as_bytes())
        .into_owned()
        .collect();
    (child, params)
}

/// `mailgate grant authorize office ARGS --config …`, stdout and stderr piped.
fn spawn_authorize(s: &Setup, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(["grant", "authorize", "office"])
        .args(args)
        .arg("--config")
        .arg(&s.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mailgate grant authorize")
}

/// Two mailgate processes' worth of grant stores on one grants directory (two servers in this
/// process, as an old and a new instance overlap during a restart): logins through both at
/// once after the access token expired. The IdP rotates refresh tokens and revokes the whole
/// grant when one is used twice, so without the refresh lock one instance's refresh would kill
/// the grant; with it, each refreshes in turn from the file the other just wrote.
#[tokio::test]
async fn two_instances_refresh_one_grant_in_turn() {
    let s = setup().await;
    authorize(&s).await;
    let first = start(&s).await;
    let second = start(&s).await;
    let carol = s.idp.token(CAROL, "mail-app", TokenKind::Jwt).await;
    let addrs = (0..20)
        .map(|i| if i % 2 == 0 { &first } else { &second }.addr("imap-plain"))
        .collect();
    all_open(addrs, &carol).await;
    assert_eq!(grant_file(&s)["state"], "active");
}

/// One XOAUTH2 login as office@ with carol's `token` to each of `addrs`, all at once; every one
/// must succeed.
async fn all_open(addrs: Vec<std::net::SocketAddr>, token: &str) {
    let mut logins = Vec::new();
    for addr in addrs {
        let ir = xoauth2(OFFICE, token);
        logins.push(tokio::spawn(async move {
            let mut imap = TcpLineClient::connect(addr).await;
            imap.read_line().await;
            imap.imap("a", &format!("AUTHENTICATE XOAUTH2 {ir}"))
                .await
                .tagged
        }));
    }
    for login in logins {
        let reply = login.await.expect("task");
        assert!(reply.starts_with("a OK"), "{reply}");
    }
}

/// Routing meets shared mailboxes: dave's own mailbox lives on the old server (the directory
/// routes him there), office@ on the provider. His password is proven where his logins are
/// routed (the provider does not know it), and the mailbox login goes to the mailbox's own
/// upstream, which the audit names.
#[tokio::test]
async fn a_routed_user_is_proven_on_his_own_upstream_and_opens_the_mailbox_on_its_own() {
    let old = Dovecot::builder()
        .users(vec![User::new(DAVE, "dave-old-secret")])
        .start();
    let s = setup_with(Some(old)).await;
    authorize(&s).await;
    let mailgate = start(&s).await;
    let expected = s.dovecot.messages(OFFICE);
    let asked = format!("{OFFICE}*{DAVE}");
    let json = imap_fetch(
        &mailgate,
        &["--user", &asked, "--password", "dave-old-secret"],
    )
    .await;
    assert_same_messages(&expected, &json);
    // His own login still lands on the old server.
    let old = s.old.as_ref().expect("old server");
    let json = imap_fetch(
        &mailgate,
        &["--user", DAVE, "--password", "dave-old-secret"],
    )
    .await;
    assert_same_messages(&old.messages(DAVE), &json);

    let records = await_records(&mailgate.services.audit, &s.audit, |r| {
        r.iter()
            .filter(|r| r["event"] == "auth" && r["user"] == DAVE)
            .count()
            >= 2
    })
    .await;
    let dave: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "auth" && r["user"] == DAVE)
        .collect();
    assert_eq!(dave[0]["mailbox"], OFFICE, "{dave:?}");
    assert_eq!(dave[0]["decision"], "allow", "{dave:?}");
    assert_eq!(dave[0]["upstream"], "provider-imap", "{dave:?}");
    assert_eq!(dave[1]["upstream"], "old-imap", "{dave:?}");
}
