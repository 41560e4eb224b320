use std::collections::BTreeMap;

use super::*;

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
[[group]]
email = "staff@example.com"
members = ["svc@example.com"]
internal_only = true
[group.policy]
priority = 1
pop = true
[[user]]
email = "svc@example.com"
ou = "/"
kind = "service"
"#;

fn user(email: &str, ou: &str) -> LdapUser {
    LdapUser {
        dn: format!(
            "uid={},ou=x,dc=example,dc=com",
            email.split('@').next().unwrap_or("")
        ),
        email: email.to_owned(),
        ou: ou.to_owned(),
        service: false,
        suspended: false,
        pop_off: false,
        imap_off: false,
    }
}

fn group(email: &str, members: &[&str]) -> LdapGroup {
    LdapGroup {
        dn: format!("cn={email},ou=Groups,dc=example,dc=com"),
        email: email.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    }
}

#[test]
fn ou_path_is_the_dn_below_base() {
    let base = "dc=example,dc=com";
    for (dn, path) in [
        (
            "uid=carol,ou=Interns,ou=Sales,dc=example,dc=com",
            Some("/Sales/Interns"),
        ),
        ("uid=a,dc=example,dc=com", Some("/")),
        ("CN=Ann,CN=Users,DC=Example,DC=com", Some("/Users")),
        ("uid=a, ou=Sales , dc=example, dc=com", Some("/Sales")),
        (r"uid=a,ou=R\2CD,dc=example,dc=com", Some("/R,D")),
        (
            r"uid=a,ou=Sales\, EMEA,dc=example,dc=com",
            Some("/Sales, EMEA"),
        ),
        ("uid=a,dc=other,dc=com", None),
        ("dc=example,dc=com", None),
    ] {
        assert_eq!(ou_path(dn, base).as_deref(), path, "{dn}");
    }
}

#[test]
fn ou_map_takes_the_longest_whole_segment_prefix() {
    let map: BTreeMap<String, String> = [
        ("/Users", "/"),
        ("/Staff", "/People"),
        ("/Staff/Sales", "/Sales"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(map_ou("/Users", &map), "/");
    assert_eq!(map_ou("/Users/IT", &map), "/IT");
    assert_eq!(map_ou("/Staff/Sales/Interns", &map), "/Sales/Interns");
    assert_eq!(map_ou("/Staff/IT", &map), "/People/IT");
    assert_eq!(map_ou("/Staffing", &map), "/Staffing");
    assert_eq!(map_ou("/Other", &map), "/Other");
}

#[test]
fn dns_compare_case_and_space_insensitively() {
    assert_eq!(
        normalize_dn("CN=Sales, OU=Groups,DC=Example,DC=com"),
        normalize_dn("cn=sales,ou=groups,dc=example,dc=com")
    );
}

#[test]
fn merge_adds_ous_users_and_members_and_names_the_source() {
    let snapshot = Snapshot {
        users: vec![
            user("alice@example.com", "/Sales"),
            user("carol@example.com", "/Sales/Interns"),
        ],
        groups: vec![group("staff@example.com", &["alice@example.com"])],
        skipped: Vec::new(),
    };
    let d = merge(POLICY, &snapshot).expect("merges");
    // /Sales exists only because an LDAP user is in it; it inherits from the root.
    let sales = d.ou_by_path("/Sales").expect("implicit OU");
    assert!(sales.effective.imap.value);
    let carol = d.principal("carol@example.com").expect("carol");
    assert!(
        !carol.effective.imap.value,
        "the file's OU setting applies to LDAP users"
    );
    // The file's group keeps its policy and member; LDAP adds alice.
    let staff = d.group_by_email("staff@example.com").expect("staff");
    assert_eq!(staff.members.len(), 2);
    assert!(
        d.principal("alice@example.com")
            .expect("alice")
            .effective
            .pop
            .value
    );
    assert_eq!(
        d.principal("alice@example.com")
            .expect("alice")
            .origin
            .to_string(),
        "ldap:uid=alice,ou=x,dc=example,dc=com"
    );
    assert_eq!(
        d.principal("svc@example.com").expect("svc").origin,
        Origin::File
    );
    assert_eq!(
        staff.origin.to_string(),
        "ldap:cn=staff@example.com,ou=Groups,dc=example,dc=com"
    );
}

#[test]
fn a_merge_error_names_the_ldap_entry_by_dn() {
    // staff is internal_only: an external LDAP member breaks it. A directory server's members
    // were not added through mailgate: reported (non-compliant, gaining nothing through
    // staff's policy), never refused, not even on a reload (issue 13).
    let snapshot = Snapshot {
        users: vec![user("eve@other.org", "/")],
        groups: vec![group("staff@example.com", &["eve@other.org"])],
        skipped: Vec::new(),
    };
    let d = merge(POLICY, &snapshot).expect("a restriction an LDAP member breaks is reported");
    let staff = d.group_by_email("staff@example.com").expect("staff");
    assert_eq!(
        staff.compliance.state,
        crate::directory::Compliance::NonCompliant
    );
    assert_eq!(&*staff.compliance.offenders[0].email, "eve@other.org");
    let eve = d.principal("eve@other.org").expect("eve");
    assert!(!eve.memberships[0].compliant);
    assert!(
        !eve.effective.pop.value,
        "staff's pop = true is not for a member that breaks it"
    );
    let before = merge(POLICY, &Snapshot::default()).expect("file only");
    assert!(d.added_offenders(&before).is_empty());
    // A duplicate of a file user is named by its DN.
    let snapshot = Snapshot {
        users: vec![user("svc@example.com", "/")],
        ..Snapshot::default()
    };
    let errors = merge(POLICY, &snapshot).expect_err("duplicate");
    assert!(
        errors
            .to_string()
            .contains("ldap:uid=svc,ou=x,dc=example,dc=com.email"),
        "{errors}"
    );
}

#[test]
fn diff_lists_every_kind_of_change_and_the_removed_fraction() {
    let mut suspended = user("bob@example.com", "/");
    let old = Snapshot {
        users: vec![
            user("alice@example.com", "/Sales"),
            user("bob@example.com", "/"),
            user("carol@example.com", "/"),
            user("dave@example.com", "/"),
        ],
        groups: vec![group("g@example.com", &["alice@example.com"])],
        skipped: Vec::new(),
    };
    suspended.suspended = true;
    let new = Snapshot {
        users: vec![
            user("alice@example.com", "/Sales/Interns"),
            suspended,
            user("carol@example.com", "/"),
            user("erin@example.com", "/"),
        ],
        groups: vec![group("g@example.com", &["erin@example.com"])],
        skipped: Vec::new(),
    };
    let d = Diff::between(&old, &new);
    assert_eq!(d.added, ["erin@example.com"]);
    assert_eq!(d.removed, ["dave@example.com"]);
    assert_eq!(d.suspended, ["bob@example.com"]);
    assert_eq!(d.moved.len(), 1);
    assert!((d.removed_fraction() - 0.25).abs() < 1e-9);
    let text = d.to_string();
    assert!(
        text.contains("user moved      alice@example.com  /Sales → /Sales/Interns"),
        "{text}"
    );
    assert!(
        text.contains("group changed   g@example.com  +erin@example.com -alice@example.com"),
        "{text}"
    );
    assert!(Diff::between(&new, &new).is_empty());
}

#[test]
fn unused_ous_are_the_file_paths_no_ldap_user_reaches() {
    let snapshot = Snapshot {
        users: vec![user("alice@example.com", "/Sales")],
        ..Snapshot::default()
    };
    assert_eq!(unused_ous(POLICY, &snapshot), ["/Sales/Interns"]);
}

proptest::proptest! {
    /// DNs come from the directory server: any text maps or is refused, never panics.
    #[test]
    fn dn_mapping_never_panics(dn in "\\PC{0,80}", base in "(dc=[a-z\\\\,=]{0,6},?){0,3}") {
        let _ = ou_path(&dn, &base);
        let _ = normalize_dn(&dn);
        let map: BTreeMap<String, String> = [("/a".to_owned(), "/".to_owned())].into();
        if let Some(p) = ou_path(&dn, &base) {
            let _ = map_ou(&p, &map);
        }
    }
}
