//! `[policy.ldap]` against a real private `slapd` ([`Slapd`]): the organisation (users, OU
//! paths, nested groups, locked accounts) comes from LDAP, the policy from `directory.toml`.
//! Syncs are fail-static: a server that is down, a refused bind or a sync that would delete
//! half the users keeps the directory in force; a restart with the server down serves the
//! cache file; an LDAP move flips a real imaplib login after the next sync.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate::directory::Directory;
use mailgate::ldap::sync::{Request, Syncer};
use mailgate::server::Services;

use crate::dovecot::{Dovecot, User};
use crate::mailgate::{Mailgate, UpstreamSpec};
use crate::ops_e2e::{audit_to, await_records, metric};
use crate::slapd::{BASE, READER_DN, READER_PASSWORD, Slapd, group_of_names, ou, person};
use crate::util::{TcpLineClient, spawn_python};

/// The policy: IMAP with passwords at the root, no POP; interns no IMAP; staff get POP.
/// `/Marketing` has no LDAP user (a warning); `svc-backup` exists only in the file.
const POLICY: &str = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
pop = false
imap = true
imap_clients = "all"
password_logins = true
[[ou]]
path = "/Sales/Interns"
imap = false
[[ou]]
path = "/Marketing"
pop = true
[[group]]
email = "staff@example.com"
[group.policy]
priority = 10
pop = true
[[user]]
email = "svc-backup@example.com"
ou = "/"
kind = "service"
"#;

fn dn(uid: &str, parent: &str) -> String {
    format!("uid={uid},{parent}")
}

fn sales() -> String {
    format!("ou=Sales,{BASE}")
}

/// `ou=Sales` holding `n` people `{prefix}0…` (numbers zero-padded to `width`).
fn sales_people(prefix: &str, n: usize, width: usize) -> String {
    let mut ldif = ou("Sales", BASE);
    for i in 0..n {
        ldif += &person(&format!("{prefix}{i:0width$}"), &sales(), "");
    }
    ldif
}

fn groups_ou() -> String {
    format!("ou=Groups,{BASE}")
}

/// alice (/Sales), bob (/Engineering), carol (/Sales/Interns), dave (/Sales, locked by
/// `pwdAccountLockedTime`); `sales` = alice + dave, `staff` = the `sales` group + bob (nested).
fn org() -> String {
    let interns = format!("ou=Interns,{}", sales());
    let eng = format!("ou=Engineering,{BASE}");
    let mut ldif = String::new();
    ldif += &ou("Sales", BASE);
    ldif += &ou("Interns", &sales());
    ldif += &ou("Engineering", BASE);
    ldif += &ou("Groups", BASE);
    ldif += &person("alice", &sales(), "");
    ldif += &person("bob", &eng, "");
    ldif += &person("carol", &interns, "");
    ldif += &person("dave", &sales(), "pwdAccountLockedTime: 20260101000000Z\n");
    ldif += &group_of_names(
        "sales",
        &groups_ou(),
        &[dn("alice", &sales()), dn("dave", &sales())],
    );
    ldif += &group_of_names(
        "staff",
        &groups_ou(),
        &[format!("cn=sales,{}", groups_ou()), dn("bob", &eng)],
    );
    ldif
}

/// `[policy.ldap]` lines for `url`, binding as the reader with the password in a file under
/// `dir`; `extra` appended (`cache_file = …`, overrides).
fn ldap_section(dir: &Path, url: &str, password: &str, extra: &str) -> String {
    let file = dir.join("bind-password");
    std::fs::write(&file, password).expect("password file");
    format!(
        "\n[policy.ldap]\npreset = \"openldap\"\nurl = {url}\nbase_dn = \"{BASE}\"\n\
         bind_dn = \"{READER_DN}\"\nbind_password_file = \"{}\"\n{extra}\n",
        file.display()
    )
}

/// A mailgate whose upstreams are never used (the test looks at the directory only).
fn no_upstream() -> crate::mailgate::MailgateBuilder {
    let spec = UpstreamSpec {
        addresses: vec!["127.0.0.1:9".to_owned()],
        tls: "none",
        ca_file: Mailgate::ca_pem(),
    };
    Mailgate::builder_for(spec.clone(), spec)
}

/// Starts a mailgate on `slapd` (plain `ldap://` on loopback) with `extra` LDAP lines.
async fn start(
    slapd: &Slapd,
    extra: &str,
    services: Services,
) -> Result<Mailgate, mailgate::ldap::SyncError> {
    let mut builder = no_upstream();
    let dir = builder.files();
    let section = ldap_section(
        &dir,
        &format!("\"{}\"", slapd.url()),
        READER_PASSWORD,
        &format!("starttls = false\n{extra}"),
    );
    builder.policy(POLICY, &section).start_ldap(services).await
}

fn directory(m: &Mailgate) -> Arc<Directory> {
    m.reloader.shared().current().config.directory.clone()
}

fn syncer(m: &Mailgate) -> &Syncer {
    m.syncer.as_ref().expect("started with start_ldap")
}

async fn sync(m: &Mailgate, force: bool) -> mailgate::ldap::sync::Report {
    tokio::time::timeout(
        Duration::from_secs(60),
        syncer(m).sync(Request {
            force,
            dry_run: false,
            trigger: "test",
        }),
    )
    .await
    .expect("sync within 60 s")
}

fn ou_of(d: &Directory, email: &str) -> String {
    let p = d
        .principal(email)
        .unwrap_or_else(|| panic!("{email} in the directory"));
    d.ou(p.ou).expect("ou").path.to_string()
}

#[tokio::test]
async fn openldap_preset_ou_tree_nested_groups_and_a_locked_account() {
    let slapd = Slapd::start(&org());
    let mailgate = start(&slapd, "", Services::default())
        .await
        .expect("first sync");
    let d = directory(&mailgate);
    // OU paths from the DN below base_dn.
    assert_eq!(ou_of(&d, "alice@example.com"), "/Sales");
    assert_eq!(ou_of(&d, "carol@example.com"), "/Sales/Interns");
    assert_eq!(ou_of(&d, "bob@example.com"), "/Engineering");
    // The locked account is suspended; the others are not.
    assert!(d.principal("dave@example.com").expect("dave").suspended);
    assert!(!d.principal("alice@example.com").expect("alice").suspended);
    // Nested groupOfNames: alice is in staff through sales; the file's policy applies.
    let alice = d.principal("alice@example.com").expect("alice");
    let staff = d.group_by_email("staff@example.com").expect("staff");
    let via_sales = alice.memberships.iter().any(|m| {
        d.group(m.group).is_some_and(|g| g.email == staff.email)
            && m.via
                .iter()
                .filter_map(|&v| d.group(v))
                .any(|g| &*g.email == "sales@example.com")
    });
    assert!(via_sales, "{:?}", alice.memberships);
    assert!(alice.effective.pop.value, "staff policy gives POP");
    assert!(
        !d.principal("carol@example.com")
            .expect("carol")
            .effective
            .imap
            .value
    );
    // Sources: LDAP entries by DN, the file's service account as file:.
    assert_eq!(
        alice.origin.to_string(),
        format!("ldap:uid=alice,ou=Sales,{BASE}")
    );
    assert_eq!(
        d.principal("svc-backup@example.com")
            .expect("svc")
            .origin
            .to_string(),
        "file:"
    );
    assert_eq!(
        staff.origin.to_string(),
        format!("ldap:cn=staff,ou=Groups,{BASE}")
    );
    // `explain` names them too.
    let attempt = mailgate::policy::Attempt {
        protocol: mailgate::proto::Protocol::Imap,
        mechanism: mailgate::proto::Mechanism::Login,
        user: "carol@example.com",
        token: None,
        authzid: None,
    };
    let text = mailgate::policy::explain(&d, &attempt, std::time::SystemTime::now()).to_string();
    assert!(
        text.contains(&format!("from ldap:uid=carol,ou=Interns,ou=Sales,{BASE}")),
        "{text}"
    );
    assert!(
        mailgate::directory::report::groups(&d).contains("from ldap:cn=staff"),
        "groups report names the source"
    );
    // A sync that finds nothing changed swaps nothing in (no new generation to re-check live
    // sessions against every `refresh`).
    let generation = mailgate.reloader.shared().current().number;
    let report = sync(&mailgate, false).await;
    assert!(report.applied, "{report:?}");
    assert_eq!(mailgate.reloader.shared().current().number, generation);
}

#[tokio::test]
async fn ldaps_and_starttls_with_the_test_ca_and_no_trust_without_it() {
    let slapd = Slapd::start(&org());
    let ca = Mailgate::ca_pem();
    for (url, extra) in [
        (slapd.ldaps_url(), format!("ca_file = \"{}\"", ca.display())),
        // ldap:// with StartTLS (the default).
        (slapd.url(), format!("ca_file = \"{}\"", ca.display())),
    ] {
        let mut builder = no_upstream();
        let dir = builder.files();
        let section = ldap_section(&dir, &format!("\"{url}\""), READER_PASSWORD, &extra);
        let m = builder
            .policy(POLICY, &section)
            .start_ldap(Services::default())
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(ou_of(&directory(&m), "carol@example.com"), "/Sales/Interns");
    }
    // Without the test CA the server's certificate is not trusted: no sync, a clear error.
    let mut builder = no_upstream();
    let dir = builder.files();
    let section = ldap_section(
        &dir,
        &format!("\"{}\"", slapd.ldaps_url()),
        READER_PASSWORD,
        "",
    );
    let e = builder
        .policy(POLICY, &section)
        .start_ldap(Services::default())
        .await
        .err()
        .expect("an untrusted certificate fails the sync");
    assert_eq!(e.cause(), "connect", "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn wrong_bind_password_fails_start_and_a_refresh_keeps_the_directory() {
    let slapd = Slapd::start(&org());
    // At start: a clear error, no server.
    let mut builder = no_upstream();
    let dir = builder.files();
    let section = ldap_section(
        &dir,
        &format!("\"{}\"", slapd.url()),
        "not-the-password",
        "starttls = false",
    );
    let e = builder
        .policy(POLICY, &section)
        .start_ldap(Services::default())
        .await
        .err()
        .expect("wrong password refuses start");
    assert_eq!(e.cause(), "bind");
    let text = e.to_string();
    assert!(
        text.contains(READER_DN) && text.contains("nvalid"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-password"),
        "password echoed: {text}"
    );

    // Running, then the bind account's password changes: the refresh keeps the directory,
    // counts the failure and writes an audit record.
    let audit_file = tempfile::NamedTempFile::new().expect("audit file");
    let services = audit_to(audit_file.path());
    let mailgate = start(&slapd, "", services.clone()).await.expect("start");
    let before = directory(&mailgate);
    let generation = mailgate.reloader.shared().current().number;
    slapd.modify(&format!(
        "dn: {READER_DN}\nchangetype: modify\nreplace: userPassword\nuserPassword: rotated\n"
    ));
    let report = sync(&mailgate, false).await;
    assert!(!report.applied);
    assert_eq!(report.cause.as_deref(), Some("bind"));
    assert_eq!(mailgate.reloader.shared().current().number, generation);
    assert!(Arc::ptr_eq(&before, &directory(&mailgate)));
    let text = services.metrics.encode();
    assert_eq!(
        metric(
            &text,
            "mailgate_directory_sync_failures_total",
            &[("cause", "bind")]
        ),
        1.0,
        "{text}"
    );
    let records = await_records(&services.audit, audit_file.path(), |r| {
        r.iter()
            .any(|x| x["event"] == "reload" && x["result"] == "rejected")
    })
    .await;
    let rejected = records
        .iter()
        .find(|x| x["event"] == "reload" && x["result"] == "rejected")
        .expect("rejected");
    assert_eq!(rejected["source"], "ldap");
    assert!(
        rejected["error"].as_str().unwrap_or("").contains("bind"),
        "{rejected}"
    );
}

#[tokio::test]
async fn server_down_keeps_the_directory_and_the_next_sync_after_it_returns_applies() {
    let mut slapd = Slapd::start(&org());
    // Two URLs: a dead one first, so every sync also fails over.
    let dead = format!("ldap://127.0.0.1:{}", crate::util::free_port());
    let mut builder = no_upstream();
    let dir = builder.files();
    let section = ldap_section(
        &dir,
        &format!("[\"{dead}\", \"{}\"]", slapd.url()),
        READER_PASSWORD,
        "starttls = false\ntimeout = \"3s\"",
    );
    let services = Services::default();
    let mailgate = builder
        .policy(POLICY, &section)
        .start_ldap(services.clone())
        .await
        .expect("fails over to the second URL");
    let before = directory(&mailgate);
    slapd.stop();
    let report = sync(&mailgate, false).await;
    assert!(!report.applied);
    assert_eq!(report.cause.as_deref(), Some("connect"), "{report:?}");
    assert!(
        Arc::ptr_eq(&before, &directory(&mailgate)),
        "directory kept"
    );
    assert_eq!(ou_of(&directory(&mailgate), "alice@example.com"), "/Sales");

    slapd.resume();
    slapd.move_entry(&dn("alice", &sales()), &format!("ou=Interns,{}", sales()));
    let report = sync(&mailgate, false).await;
    assert!(report.applied, "{report:?}");
    assert!(
        report.changes.contains("/Sales → /Sales/Interns"),
        "{}",
        report.changes
    );
    assert_eq!(
        ou_of(&directory(&mailgate), "alice@example.com"),
        "/Sales/Interns"
    );
    let text = services.metrics.encode();
    assert!(
        metric(
            &text,
            "mailgate_directory_sync_last_success_timestamp_seconds",
            &[]
        ) > 0.0
    );
    assert_eq!(
        metric(&text, "mailgate_directory_entries", &[("kind", "user")]),
        4.0
    );
}

/// 2,500 users: slapd answers at most `sizelimit 500` entries per plain search, so getting all
/// of them proves the paged search (RFC 2696, 500 a page by default).
#[tokio::test]
async fn twenty_five_hundred_users_arrive_through_paged_search() {
    let slapd = Slapd::start(&sales_people("user", 2500, 4));
    // Proof that the server caps an unpaged search.
    let out = std::process::Command::new("/usr/bin/ldapsearch")
        .args([
            "-x",
            "-H",
            &slapd.url(),
            "-b",
            BASE,
            "(objectClass=inetOrgPerson)",
            "dn",
        ])
        .output()
        .expect("ldapsearch");
    assert_eq!(
        out.status.code(),
        Some(4),
        "sizeLimitExceeded without paging"
    );
    let started = Instant::now();
    let mailgate = start(&slapd, "", Services::default()).await.expect("sync");
    let took = started.elapsed();
    let d = directory(&mailgate);
    assert_eq!(
        d.principals()
            .iter()
            .filter(|p| p.origin.to_string().starts_with("ldap:"))
            .count(),
        2500
    );
    assert!(d.principal("user2499@example.com").is_some());
    eprintln!("2,500 users synced in {took:?}");
}

#[tokio::test]
async fn deleting_half_the_users_is_refused_by_the_safety_valve_and_applied_with_force() {
    let slapd = Slapd::start(&sales_people("u", 40, 2));
    let audit_file = tempfile::NamedTempFile::new().expect("audit file");
    let services = audit_to(audit_file.path());
    let mailgate = start(&slapd, "", services.clone()).await.expect("sync");
    let half: Vec<String> = (0..20).map(|i| dn(&format!("u{i:02}"), &sales())).collect();
    slapd.delete(&half);

    // A dry run says what would happen, and changes nothing.
    let dry = syncer(&mailgate)
        .sync(Request {
            force: false,
            dry_run: true,
            trigger: "test",
        })
        .await;
    assert_eq!(dry.cause.as_deref(), Some("safety_valve"), "{dry:?}");
    assert!(
        dry.changes.contains("user removed    u00@example.com"),
        "{}",
        dry.changes
    );

    let refused = sync(&mailgate, false).await;
    assert!(!refused.applied);
    assert_eq!(refused.cause.as_deref(), Some("safety_valve"));
    let error = refused.error.unwrap_or_default();
    assert!(
        error.contains("20 of 40") && error.contains("--force"),
        "{error}"
    );
    assert!(directory(&mailgate).principal("u00@example.com").is_some());
    let text = services.metrics.encode();
    assert_eq!(
        metric(
            &text,
            "mailgate_directory_sync_failures_total",
            &[("cause", "safety_valve")]
        ),
        1.0
    );

    let forced = sync(&mailgate, true).await;
    assert!(forced.applied, "{forced:?}");
    assert!(directory(&mailgate).principal("u00@example.com").is_none());
    assert!(directory(&mailgate).principal("u39@example.com").is_some());
    let records = await_records(&services.audit, audit_file.path(), |r| {
        r.iter().filter(|x| x["event"] == "reload").count() >= 3
    })
    .await;
    let reloads: Vec<_> = records.iter().filter(|x| x["event"] == "reload").collect();
    assert_eq!(reloads[1]["result"], "rejected");
    assert_eq!(reloads[2]["result"], "ok");
    assert_eq!(reloads[2]["source"], "ldap");
    assert!(
        reloads[2]["changes"]
            .as_str()
            .unwrap_or("")
            .contains("40 → 20 users"),
        "{}",
        reloads[2]
    );
}

#[tokio::test]
async fn restart_with_the_server_down_serves_the_cache_file() {
    let mut slapd = Slapd::start(&org());
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = cache_dir.path().join("ldap-cache.json");
    let extra = format!("cache_file = \"{}\"", cache.display());
    let first = start(&slapd, &extra, Services::default())
        .await
        .expect("sync");
    assert!(cache.exists(), "the applied sync is cached");
    drop(first);
    slapd.stop();
    // Without a cache the same start is refused...
    let e = start(&slapd, "", Services::default())
        .await
        .err()
        .expect("no server, no cache: no start");
    assert_eq!(e.cause(), "connect");
    // ...with it, the last known organisation is served, loudly.
    let again = start(&slapd, &extra, Services::default())
        .await
        .expect("served from the cache");
    assert_eq!(
        ou_of(&directory(&again), "carol@example.com"),
        "/Sales/Interns"
    );
    assert!(
        directory(&again)
            .principal("dave@example.com")
            .expect("dave")
            .suspended
    );
    assert!(crate::mailgate::captured_logs().contains("LDAP DIRECTORY UNREACHABLE AT START"));
}

/// The user-visible end: alice logs in over IMAP with real imaplib; she is moved to
/// `ou=Interns,ou=Sales` in LDAP; after the periodic sync her idle session is cut
/// (`revoke_on_reload`) and her next login is refused. Prints the delay from the LDAP change.
#[tokio::test]
async fn an_ldap_move_flips_a_real_imap_login_after_the_next_sync() {
    let slapd = Slapd::start(&org());
    let dovecot = Dovecot::builder()
        .users(vec![User::new("alice@example.com", "alice-secret")])
        .start();
    let mut builder = Mailgate::builder(&dovecot);
    let dir = builder.files();
    let section = ldap_section(
        &dir,
        &format!("\"{}\"", slapd.url()),
        READER_PASSWORD,
        "starttls = false\nrefresh = \"1s\"",
    );
    let mailgate = builder
        .policy(
            POLICY,
            &format!("revoke_on_reload = true\ndisclose_reasons = \"always\"\n{section}"),
        )
        .start_ldap(Services::default())
        .await
        .expect("start");
    let port = mailgate.addr("imap-plain").port().to_string();
    let login = |mode: &'static str| {
        let args: Vec<String> = [
            "--port",
            &port,
            "--tls",
            "none",
            "--user",
            "alice@example.com",
            "--password",
            "alice-secret",
            "--mode",
            mode,
            "--idle-timeout",
            "30",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        spawn_python("imap_client.py", &args)
    };
    let mut idle = login("idle");
    assert_eq!(
        idle.next_line(Duration::from_secs(30)).await.as_deref(),
        Some("IDLING")
    );
    let runner = tokio::spawn(syncer(&mailgate).clone().run());
    let mut generations = mailgate.reloader.shared().subscribe();
    generations.borrow_and_update();
    let moved_at = Instant::now();
    slapd.move_entry(&dn("alice", &sales()), &format!("ou=Interns,{}", sales()));
    // The periodic sync (refresh 1 s) swaps a new generation.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            generations.changed().await.expect("server alive");
            if ou_of(&directory(&mailgate), "alice@example.com") == "/Sales/Interns" {
                break;
            }
        }
    })
    .await
    .expect("synced within 30 s");
    let synced = moved_at.elapsed();
    let out = idle.finish(Duration::from_secs(30)).await;
    let cut = moved_at.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("BYE") || text.contains("revoked"), "{text}");
    // A new login is refused by policy, never reaching Dovecot's password check.
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let reply = imap.command("a LOGIN alice@example.com alice-secret").await;
    assert!(reply.starts_with("a NO [AUTHORIZATIONFAILED]"), "{reply}");
    runner.abort();
    eprintln!("LDAP move → applied {synced:?}, idle session cut {cut:?} (refresh 1 s)");
}

/// The `active_directory` preset against slapd with AD-SHAPED entries (test schema
/// `slapd::AD_SCHEMA`: AD's names and value shapes, not a domain controller): users in the
/// `CN=Users` container and an OU, `userAccountControl` 514 (0x2 ACCOUNTDISABLE) suspends,
/// `userPrincipalName` stands in for a missing `mail`, a computer account is left out by
/// `objectCategory=person`, nested `group`/`member`.
#[tokio::test]
async fn active_directory_preset_against_ad_shaped_entries() {
    let base = BASE;
    let users_cn = format!("cn=Users,{base}");
    let sales_ou = format!("ou=Sales,{base}");
    let ad_user = |cn: &str, parent: &str, uac: u32, mail: Option<&str>, category: &str| {
        let mut e = format!(
            "dn: cn={cn},{parent}\nobjectClass: user\ncn: {cn}\nsn: {cn}\nsAMAccountName: {cn}\n\
             userPrincipalName: {cn}@example.com\nuserAccountControl: {uac}\n\
             objectCategory: {category}\n"
        );
        if let Some(m) = mail {
            e += &format!("mail: {m}\n");
        }
        e + "\n"
    };
    let mut ldif = format!("dn: {users_cn}\nobjectClass: organizationalRole\ncn: Users\n\n");
    ldif += &ou("Sales", base);
    ldif += &ad_user("Ann", &users_cn, 512, Some("ann.ad@example.com"), "person");
    ldif += &ad_user("Ben", &sales_ou, 514, Some("ben@example.com"), "person");
    ldif += &ad_user("Cal", &sales_ou, 66048, None, "person");
    ldif += &ad_user("PC01", &users_cn, 4096, None, "computer");
    ldif += &format!(
        "dn: cn=Sales Team,{sales_ou}\nobjectClass: group\ncn: Sales Team\n\
         mail: sales-team@example.com\nmember: cn=Ben,{sales_ou}\nmember: cn=Cal,{sales_ou}\n\n\
         dn: cn=Everyone,{users_cn}\nobjectClass: group\ncn: Everyone\nmail: everyone@example.com\n\
         member: cn=Sales Team,{sales_ou}\nmember: cn=Ann,{users_cn}\nmember: cn=PC01,{users_cn}\n\n"
    );
    let slapd = Slapd::start(&ldif);
    let mut builder = no_upstream();
    let dir = builder.files();
    let section = ldap_section(
        &dir,
        &format!("\"{}\"", slapd.url()),
        READER_PASSWORD,
        "starttls = false\nou_map = { \"/Users\" = \"/\" }",
    )
    .replace("preset = \"openldap\"", "preset = \"active_directory\"");
    let mailgate = builder
        .policy(POLICY, &section)
        .start_ldap(Services::default())
        .await
        .expect("AD-shaped sync");
    let d = directory(&mailgate);
    // CN=Users mapped to the root by ou_map; OU=Sales as /Sales.
    assert_eq!(ou_of(&d, "ann.ad@example.com"), "/");
    assert_eq!(ou_of(&d, "ben@example.com"), "/Sales");
    // No mail: userPrincipalName.
    assert_eq!(ou_of(&d, "cal@example.com"), "/Sales");
    // 514 = NORMAL_ACCOUNT | ACCOUNTDISABLE; 66048 = NORMAL | DONT_EXPIRE_PASSWORD.
    assert!(d.principal("ben@example.com").expect("ben").suspended);
    assert!(!d.principal("cal@example.com").expect("cal").suspended);
    assert!(!d.principal("ann.ad@example.com").expect("ann").suspended);
    // The computer account is not a user.
    assert!(d.principal("pc01@example.com").is_none());
    // Nested: cal is in everyone through sales-team.
    let cal = d.principal("cal@example.com").expect("cal");
    let groups: Vec<&str> = cal
        .memberships
        .iter()
        .filter_map(|m| d.group(m.group).map(|g| &*g.email))
        .collect();
    assert_eq!(groups, ["everyone@example.com", "sales-team@example.com"]);
}

/// The operator commands, as the binary: `check` does not contact the server unless
/// `--connect`; `directory sync --dry-run` (no admin listener) diffs a live read against the
/// cache file.
#[tokio::test]
async fn check_and_dry_run_from_the_command_line() {
    let slapd = Slapd::start(&org());
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("cache.json");
    let mut builder = no_upstream();
    let files = builder.files();
    let section = ldap_section(
        &files,
        &format!("\"{}\"", slapd.url()),
        READER_PASSWORD,
        &format!("starttls = false\ncache_file = \"{}\"", cache.display()),
    );
    let builder = builder.policy(POLICY, &section);
    let config_path = dir.path().join("mailgate.toml");
    std::fs::write(&config_path, builder.toml()).expect("config");
    let _first = builder
        .start_ldap(Services::default())
        .await
        .expect("first sync writes the cache");
    slapd.move_entry(&dn("alice", &sales()), &format!("ou=Interns,{}", sales()));
    let bin = env!("CARGO_BIN_EXE_mailgate");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .output()
            .expect("mailgate runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(&["check"]);
    assert!(ok, "{text}");
    assert!(
        !text.contains("policy.ldap: read"),
        "check alone reads nothing: {text}"
    );
    // Start-up checks read the CA file and find the cache file's directory, offline.
    let broken = dir.path().join("broken.toml");
    let cache_line = format!("cache_file = \"{}\"", cache.display());
    let text = std::fs::read_to_string(&config_path).expect("config").replace(
        &cache_line,
        "cache_file = \"/nonexistent-mailgate-dir/cache.json\"\nca_file = \"/nonexistent-ca.pem\"",
    );
    std::fs::write(&broken, text).expect("broken config");
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&broken)
        .output()
        .expect("mailgate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("policy.ldap.ca_file") && stderr.contains("policy.ldap.cache_file"),
        "{stderr}"
    );
    let (ok, text) = run(&["check", "--connect"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("policy.ldap: read 4 user(s) and 2 group(s)"),
        "{text}"
    );
    let (ok, text) = run(&["directory", "sync", "--dry-run"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("user moved      alice@example.com  /Sales → /Sales/Interns"),
        "{text}"
    );
    // `explain` reads the cache (the organisation the server enforces), with the source.
    let (ok, text) = run(&["explain", "alice@example.com", "--protocol", "imap"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("from ldap:uid=alice,ou=Sales,{BASE}")),
        "{text}"
    );
}

/// `mailgate directory sync` against the running mailgate's admin listener
/// (`POST /directory/sync`): refused by the safety valve with the reason and exit 1, applied
/// with `--force`; a request without the admin header is refused.
#[tokio::test]
async fn directory_sync_through_the_admin_listener() {
    let slapd = Slapd::start(&sales_people("a", 10, 1));
    let mailgate = start(&slapd, "", Services::default()).await.expect("sync");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = listener.local_addr().expect("addr");
    let routes = mailgate::ldap::sync::routes(syncer(&mailgate).clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mailgate::admin::serve_router(
        listener,
        routes,
        mailgate::config::Admin::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let half: Vec<String> = (0..5).map(|i| dn(&format!("a{i}"), &sales())).collect();
    slapd.delete(&half);
    // The command needs a config only for `[policy.ldap]`; the admin address is given.
    let dir = tempfile::tempdir().expect("dir");
    let config_path = dir.path().join("mailgate.toml");
    let mut builder = no_upstream();
    let files = builder.files();
    let section = ldap_section(
        &files,
        &format!("\"{}\"", slapd.url()),
        READER_PASSWORD,
        "starttls = false",
    );
    // Kept until the end: it owns the directory and password files the config names.
    let builder = builder.policy(POLICY, &section);
    std::fs::write(&config_path, builder.toml()).expect("config");
    let admin_arg = admin.to_string();
    let run = |extra: &'static [&'static str]| {
        let config_path = config_path.clone();
        let admin_arg = admin_arg.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
                .args(["directory", "sync", "--admin", &admin_arg, "--config"])
                .arg(&config_path)
                .args(extra)
                .output()
                .expect("mailgate runs")
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(60), run(&[]))
        .await
        .expect("bounded")
        .expect("joined");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("safety valve") && text.contains("5 of 10"),
        "{text}"
    );
    assert!(directory(&mailgate).principal("a0@example.com").is_some());
    let out = tokio::time::timeout(Duration::from_secs(60), run(&["--force"]))
        .await
        .expect("bounded")
        .expect("joined");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("user removed    a0@example.com") && text.contains("applied: 5 user(s)"),
        "{text}"
    );
    assert!(directory(&mailgate).principal("a0@example.com").is_none());
    // Without the header: refused, nothing run.
    let out = crate::util::run_curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("http://{admin}/directory/sync"),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
