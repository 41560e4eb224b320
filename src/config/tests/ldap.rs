//! `[policy.ldap]`: presets, overrides, and every validation error with its key path. Loading
//! never contacts the server.

use super::*;

const DIRECTORY: &str = r#"
[[ou]]
path = "/"
pop = false
imap = true
imap_clients = "all"
password_logins = true
[[ou]]
path = "/Sales/Interns"
imap = false
"#;

/// BASE plus `[policy]` naming a directory file in a temp dir, plus `[policy.ldap]` `keys`.
fn with_ldap(keys: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("directory.toml"), DIRECTORY).unwrap();
    std::fs::write(dir.path().join("bind.pw"), "s3cret-bind\n").unwrap();
    let text = format!(
        "{BASE}\n[policy]\ndirectory = \"{d}/directory.toml\"\n[policy.ldap]\n{keys}\n",
        d = dir.path().display()
    );
    (dir, text)
}

fn ldap_of(text: &str) -> Arc<crate::config::ldap::LdapConfig> {
    load(text).unwrap().policy.ldap.unwrap()
}

#[test]
fn openldap_preset_with_defaults() {
    let (dir, text) = with_ldap(
        "preset = \"openldap\"\nurl = \"ldaps://ldap.example.com\"\nbase_dn = \"dc=example,dc=com\"\n\
         bind_dn = \"cn=mailgate,dc=example,dc=com\"\nbind_password_file = \"PW\"",
    );
    // Absolute: a relative one would resolve against the config's directory (/etc/mailgate).
    let text = text.replace("\"PW\"", &format!("\"{}/bind.pw\"", dir.path().display()));
    let l = ldap_of(&text);
    assert_eq!(l.urls, ["ldaps://ldap.example.com"]);
    assert_eq!(l.users.filter, "(objectClass=inetOrgPerson)");
    assert_eq!(l.users.suspended.as_deref(), Some("pwdAccountLockedTime"));
    assert_eq!(l.groups.member, "member");
    assert_eq!(l.refresh, crate::config::ldap::DEFAULT_REFRESH);
    assert_eq!(l.page_size, 500);
    assert!((l.max_removed_fraction - 0.10).abs() < 1e-9);
    let (dn, pw) = l.bind.as_ref().unwrap();
    assert_eq!(dn, "cn=mailgate,dc=example,dc=com");
    assert_eq!(pw.expose(), "s3cret-bind");
    assert!(
        !format!("{l:?}").contains("s3cret-bind"),
        "Debug redacts the password"
    );
    // Without LDAP the file would need /Sales declared; with it the tree is LDAP's.
    assert!(
        load(&text)
            .unwrap()
            .directory
            .ou_by_path("/Sales")
            .is_some()
    );
}

#[test]
fn active_directory_preset_and_overrides() {
    let (_dir, text) = with_ldap(
        "preset = \"active_directory\"\nurl = [\"ldaps://dc1.corp\", \"ldaps://dc2.corp\"]\n\
         base_dn = \"DC=corp,DC=example\"\nrefresh = \"1m\"\npage_size = 1000\n\
         user_email_attributes = [\"proxyAddresses\"]\ngroup_filter = \"(objectClass=group)\"\n\
         ou_map = { \"/Users\" = \"/\" }\nmax_removed_fraction = 0.25",
    );
    let l = ldap_of(&text);
    assert_eq!(l.urls.len(), 2);
    assert_eq!(
        l.users.filter,
        "(&(objectCategory=person)(objectClass=user))"
    );
    assert_eq!(l.users.suspended.as_deref(), Some("userAccountControl"));
    assert_eq!(l.users.suspended_mask, Some(2));
    assert_eq!(l.users.email, ["proxyAddresses"]);
    assert_eq!(l.refresh, Duration::from_secs(60));
    assert_eq!(l.page_size, 1000);
    assert!(l.bind.is_none(), "anonymous");
}

#[test]
fn plaintext_ldap_only_on_loopback() {
    let keys = |url: &str| {
        format!("preset = \"openldap\"\nurl = \"{url}\"\nbase_dn = \"dc=x\"\nstarttls = false")
    };
    let (_d, text) = with_ldap(&keys("ldap://ldap.example.com"));
    assert_one(&text, "policy.ldap.starttls", "in clear");
    for url in [
        "ldap://127.0.0.1:3389",
        "ldap://localhost",
        "ldap://[::1]:389",
    ] {
        let (_d, text) = with_ldap(&keys(url));
        assert!(load(&text).is_ok(), "{url}");
    }
}

#[test]
fn every_error_has_its_key() {
    for (keys, path, needle) in [
        (
            "url = \"ldaps://x\"\nbase_dn = \"dc=x\"",
            "policy.ldap.preset",
            "missing",
        ),
        (
            "preset = \"openldap\"\nbase_dn = \"dc=x\"",
            "policy.ldap.url",
            "at least one",
        ),
        (
            "preset = \"openldap\"\nurl = \"http://x\"\nbase_dn = \"dc=x\"",
            "policy.ldap.url",
            "ldap://",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"",
            "policy.ldap.base_dn",
            "not a DN",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nuser_filter = \"uid=*\"",
            "policy.ldap.user_filter",
            "RFC 4515",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\npage_size = 5000",
            "policy.ldap.page_size",
            "1000",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nmax_removed_fraction = 1.5",
            "policy.ldap.max_removed_fraction",
            "between",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nrefresh = \"soon\"",
            "policy.ldap.refresh",
            "",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nbind_dn = \"cn=a\"",
            "policy.ldap.bind_password_file",
            "bind_dn needs",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nbind_dn = \"cn=a\"\n\
             bind_password = \"hunter2\"",
            "policy.ldap.bind_password",
            "env:NAME",
        ),
        (
            "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nou_map = { \"Users\" = \"/\" }",
            "policy.ldap.ou_map",
            "not an OU path",
        ),
    ] {
        let (_d, text) = with_ldap(keys);
        let all = errors(&text);
        assert!(
            all.iter()
                .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle)),
            "{keys}: want {path} {needle:?} in {all:#?}"
        );
        assert!(
            !all.iter().any(|e| e.contains("hunter2")),
            "secret echoed: {all:#?}"
        );
    }
}

#[test]
fn unknown_key_and_unknown_preset_are_rejected() {
    let (_d, text) = with_ldap(
        "preset = \"openldap\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nusr_filter = \"(a=b)\"",
    );
    assert!(errors(&text).iter().any(|e| e.contains("usr_filter")));
    let (_d, text) = with_ldap("preset = \"novell\"\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"");
    assert!(errors(&text).iter().any(|e| e.contains("novell")));
}
