//! Directory loading: the shipped file, every rejection with its key path, inheritance,
//! memberships and compliance.

use std::path::Path;

use super::*;

const ROOT: &str = r#"
internal_domains = ["example.com"]

[[ou]]
path = "/"
pop = true
imap = true
imap_clients = "all"
password_logins = true
"#;

fn load(extra: &str) -> Result<Directory, Errors> {
    Directory::from_toml(&format!("{ROOT}\n{extra}"))
}

#[track_caller]
fn ok(extra: &str) -> Directory {
    match load(extra) {
        Ok(d) => d,
        Err(e) => panic!("expected to load, got:\n{e}"),
    }
}

#[track_caller]
fn errors(text: &str) -> Vec<String> {
    match Directory::from_toml(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Exactly one error, at `path`, mentioning `needle`.
#[track_caller]
fn assert_one(extra: &str, path: &str, needle: &str) {
    let all = errors(&format!("{ROOT}\n{extra}"));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with(&format!("{path}: ")),
        "want {path}: {all:#?}"
    );
    assert!(all[0].contains(needle), "want {needle:?}: {all:#?}");
}

fn shipped_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/directory.toml");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn shipped_directory_loads() {
    let d = Directory::from_toml(&shipped_text()).unwrap();
    for user in ["alice@example.com", "bob@example.com", "carol@example.com"] {
        assert!(d.principal(user).is_some(), "{user}");
    }
    let carol = d.principal("carol@example.com").unwrap();
    assert_eq!(&*d.ou(carol.ou).unwrap().path, "/Sales/Interns");
    assert!(!carol.effective.imap.value);
    let state = |g: &str| d.group_by_email(g).unwrap().compliance.state;
    assert_eq!(state("all-staff@example.com"), Compliance::NonCompliant);
    assert_eq!(
        state("engineering@example.com"),
        Compliance::NonCompliantLocked
    );
    assert_eq!(state("imap-pilot@example.com"), Compliance::Compliant);
    assert!(
        d.principals()
            .iter()
            .any(|p| p.kind == PrincipalKind::Service)
    );
    assert!(d.principals().iter().any(|p| p.suspended));
}

/// hickory-dns `test_reject_unknown_fields`: an unknown key added to any table of the shipped
/// file is rejected with that table's path.
#[test]
fn unknown_key_in_any_table_is_rejected() {
    let shipped: toml::Table = toml::from_str(&shipped_text()).unwrap();
    let mut cases: Vec<(toml::Table, String)> = Vec::new();
    let mut top = shipped.clone();
    top.insert("bogus".into(), toml::Value::Integer(1));
    cases.push((top, "bogus".into()));
    for key in ["ou", "user", "group"] {
        let n = shipped[key].as_array().unwrap().len();
        for i in 0..n {
            let mut t = shipped.clone();
            let item = t.get_mut(key).unwrap().as_array_mut().unwrap()[i]
                .as_table_mut()
                .unwrap();
            item.insert("bogus".into(), toml::Value::Integer(1));
            cases.push((t, format!("{key}[{i}]")));
            let has_policy = shipped[key].as_array().unwrap()[i].get("policy").is_some();
            if has_policy {
                let mut t = shipped.clone();
                let policy = t.get_mut(key).unwrap().as_array_mut().unwrap()[i]
                    .get_mut("policy")
                    .unwrap()
                    .as_table_mut()
                    .unwrap();
                policy.insert("bogus".into(), toml::Value::Integer(1));
                cases.push((t, format!("{key}[{i}].policy")));
            }
        }
    }
    assert!(cases.len() > 15);
    for (table, path) in cases {
        let text = toml::to_string(&table).unwrap();
        let all = errors(&text);
        assert!(
            all.iter()
                .any(|e| e.starts_with(path.as_str()) && e.contains("bogus")),
            "{path}: {all:#?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let all = errors(&format!(
        "{ROOT}
[[user]]
email = \"a@example.com\"
ou = \"/Nowhere\"
[[user]]
email = \"b@example.com\"
ou = \"/\"
imap = true
[[group]]
email = \"g@example.com\"
members = [\"ghost@example.com\"]
"
    ));
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(
        all[0].starts_with("user[0].ou: unknown OU \"/Nowhere\""),
        "{all:#?}"
    );
    assert!(all[1].starts_with("user[1].imap: a user switch can only turn access off"));
    assert!(all[2].starts_with("group[0].members[0]: unknown member \"ghost@example.com\""));
}

#[test]
fn rejections_name_their_key_path() {
    let user = |email: &str, ou: &str, kind: &str| {
        format!("[[user]]\nemail = \"{email}\"\nou = \"{ou}\"\nkind = \"{kind}\"\n")
    };
    let people = format!(
        "{}{}{}",
        user("a@example.com", "/", "user"),
        user("svc@example.com", "/", "service"),
        user("ext@partner.example", "/", "user"),
    );
    let cases: Vec<(String, &str, &str)> = vec![
        (user("x@example.com", "/Nope", "user"), "user[0].ou", "unknown OU \"/Nope\""),
        (
            format!("{}{}", user("x@example.com", "/", "user"), user("X@Example.com", "/", "user")),
            "user[1].email",
            "duplicate user \"x@example.com\" (also user[0])",
        ),
        (user("not-an-email", "/", "user"), "user[0].email", "is not an email address"),
        (
            format!("{people}[[user]]\nemail = \"c@example.com\"\nou = \"/\"\npop = true\n"),
            "user[3].pop",
            "can only turn access off",
        ),
        (
            format!("{people}[[group]]\nemail = \"g@example.com\"\nmembers = [\"nobody@example.com\"]\n"),
            "group[0].members[0]",
            "unknown member \"nobody@example.com\"",
        ),
        (
            format!("{people}[[group]]\nemail = \"g@example.com\"\n[[group]]\nemail = \"G@example.com\"\n"),
            "group[1].email",
            "duplicate group \"g@example.com\" (also group[0])",
        ),
        (
            format!("{people}[[group]]\nemail = \"a@example.com\"\n"),
            "group[0].email",
            "\"a@example.com\" is already a user (user[0])",
        ),
        (
            format!("{people}[[group]]\nemail = \"g@example.com\"\nmembers = [\"g@example.com\"]\n"),
            "group[0].members[0]",
            "a group cannot contain itself",
        ),
        (
            format!(
                "{people}[[group]]\nemail = \"g@example.com\"\nmembers = [\"a@example.com\", \
                 \"A@example.com\"]\n"
            ),
            "group[0].members[1]",
            "listed twice",
        ),
        (
            format!(
                "{people}[[group]]\nemail = \"g@example.com\"\n[group.policy]\npriority = 5\npop = false\n\
                 [[group]]\nemail = \"h@example.com\"\n[group.policy]\npriority = 5\nimap = false\n"
            ),
            "group[1].policy.priority",
            "priority 5 is already used by group \"g@example.com\"",
        ),
        (
            format!("{people}[[group]]\nemail = \"g@example.com\"\ngrandfathered = [\"a@example.com\"]\n"),
            "group[0].grandfathered",
            "only meaningful with locked = true",
        ),
        (
            "[[ou]]\npath = \"/A/B\"\n".to_owned(),
            "ou[0].path",
            "parent OU \"/A\" is not declared",
        ),
        ("[[ou]]\npath = \"Sales\"\n".to_owned(), "ou[0].path", "must start with \"/\""),
        ("[[ou]]\npath = \"/Sales/\"\n".to_owned(), "ou[0].path", "trailing"),
        (
            "[[ou]]\npath = \"/\"\n".to_owned(),
            "ou[0].path",
            "duplicate OU \"/\" (also ou[0])",
        ),
        (
            "[[ou]]\npath = \"/S\"\nimap_clients = \"allowlist\"\n".to_owned(),
            "ou[0].imap_clients",
            "needs imap_allowed_client_ids",
        ),
        (
            "[[ou]]\npath = \"/S\"\nimap_allowed_client_ids = [\"x\"]\n".to_owned(),
            "ou[0].imap_allowed_client_ids",
            "needs imap_clients = \"allowlist\"",
        ),
        (
            "[[ou]]\npath = \"/S\"\nimap_clients = \"all\"\nimap_allowed_client_ids = [\"x\"]\n"
                .to_owned(),
            "ou[0].imap_allowed_client_ids",
            "only meaningful with imap_clients = \"allowlist\"",
        ),
        (
            "[[ou]]\npath = \"/S\"\nimap_clients = \"allowlist\"\nimap_allowed_client_ids = [\"a b\"]\n"
                .to_owned(),
            "ou[0].imap_allowed_client_ids[0]",
            "is not a client ID",
        ),
        (
            "[[ou]]\npath = \"/S\"\nimap_clients = \"some\"\n".to_owned(),
            "ou[0].imap_clients",
            "unknown variant `some`",
        ),
        (
            "[[user]]\nemail = \"a@example.com\"\nou = \"/\"\nkind = \"robot\"\n".to_owned(),
            "user[0].kind",
            "unknown variant `robot`",
        ),
        (
            "[[group]]\nemail = \"g@example.com\"\n[group.policy]\npop = true\n".to_owned(),
            "group[0].policy",
            "missing field `priority`",
        ),
    ];
    for (extra, path, needle) in cases {
        // Shift indices: ROOT declares ou[0], so extra OUs start at ou[1].
        let path = path.replacen("ou[0]", "ou[1]", 1);
        assert_one(&extra, &path, needle);
    }
}

#[test]
fn root_must_set_every_setting() {
    let all = errors("[[ou]]\npath = \"/\"\npop = true\n");
    assert_eq!(
        all,
        [
            "ou[0].imap: the root OU must set every setting: there is nothing above it to \
             inherit from",
            "ou[0].imap_clients: the root OU must set every setting: there is nothing above it \
             to inherit from",
            "ou[0].password_logins: the root OU must set every setting: there is nothing above \
             it to inherit from",
        ]
    );
    let all = errors("[[ou]]\npath = \"/Sales\"\npop = true\n");
    assert!(
        all.iter().any(|e| e.starts_with("ou: no root OU")),
        "{all:#?}"
    );
}

#[test]
fn nesting_cycles_are_reported_once_each() {
    let all = errors(&format!(
        "{ROOT}
[[group]]
email = \"a@example.com\"
members = [\"b@example.com\"]
[[group]]
email = \"b@example.com\"
members = [\"c@example.com\"]
[[group]]
email = \"c@example.com\"
members = [\"a@example.com\"]
[[group]]
email = \"d@example.com\"
members = [\"a@example.com\"]
"
    ));
    assert_eq!(
        all,
        [
            "group[2].members[0]: nesting cycle: a@example.com → b@example.com → c@example.com → \
          a@example.com"
        ]
    );
}

#[test]
fn long_nesting_chain_does_not_overflow() {
    let mut text = String::from(ROOT);
    for i in 0..3_000 {
        text.push_str(&format!(
            "[[group]]\nemail = \"g{i}@example.com\"\nmembers = [\"g{}@example.com\"]\n",
            i + 1
        ));
    }
    text.push_str("[[group]]\nemail = \"g3000@example.com\"\n");
    let d = Directory::from_toml(&text).unwrap();
    assert_eq!(d.groups().len(), 3_001);
}

#[test]
fn locked_group_rejects_new_offenders() {
    let base = "
[[user]]
email = \"svc@example.com\"
ou = \"/\"
kind = \"service\"
[[user]]
email = \"svc2@example.com\"
ou = \"/\"
kind = \"service\"
[[group]]
email = \"robots@example.com\"
members = [\"svc@example.com\", \"svc2@example.com\"]
[[group]]
email = \"people@example.com\"
members = [\"robots@example.com\"]
allowed_member_kinds = [\"user\", \"group\"]
locked = true
";
    assert_one(
        &format!("{base}grandfathered = [\"robots@example.com\", \"svc@example.com\"]\n"),
        "group[1].locked",
        "\"svc2@example.com\" (via robots@example.com) is a service, which may not join and is \
         not in grandfathered",
    );
    let d = ok(&format!(
        "{base}grandfathered = [\"robots@example.com\", \"svc@example.com\", \
         \"SVC2@example.com\"]\n"
    ));
    let people = d.group_by_email("people@example.com").unwrap();
    assert_eq!(people.compliance.state, Compliance::NonCompliantLocked);
    // robots carries fewer restrictions than people (none), and holds two service accounts.
    assert_eq!(people.compliance.offenders.len(), 3);
}

#[test]
fn compliance_lists_offenders_with_their_path() {
    let d = ok("
[[user]]
email = \"ext@partner.example\"
ou = \"/\"
[[user]]
email = \"in@example.com\"
ou = \"/\"
[[group]]
email = \"outer@example.com\"
members = [\"mid@example.com\", \"in@example.com\"]
internal_only = true
[[group]]
email = \"mid@example.com\"
members = [\"inner@example.com\"]
[[group]]
email = \"inner@example.com\"
members = [\"ext@partner.example\", \"in@example.com\"]
");
    let outer = d.group_by_email("outer@example.com").unwrap();
    assert_eq!(outer.compliance.state, Compliance::NonCompliant);
    // mid and inner carry no restriction, fewer than outer's; ext is outside.
    let offender = |email: &str, kind, rule, via: &[&str]| Offender {
        email: email.into(),
        kind,
        rule,
        via: via.iter().map(|&v| v.into()).collect(),
        entry: "group[0].members[0]".to_owned(),
        entry_email: "mid@example.com".into(),
    };
    assert_eq!(
        outer.compliance.offenders,
        [
            offender("mid@example.com", MemberKind::Group, Rule::Weaker, &[]),
            offender(
                "inner@example.com",
                MemberKind::Group,
                Rule::Weaker,
                &["mid@example.com"]
            ),
            offender(
                "ext@partner.example",
                MemberKind::User,
                Rule::External,
                &["mid@example.com", "inner@example.com"]
            ),
        ]
    );
    for g in ["mid@example.com", "inner@example.com"] {
        assert_eq!(
            d.group_by_email(g).unwrap().compliance.state,
            Compliance::Compliant
        );
    }
    let ext = d.principal("EXT@Partner.Example").unwrap();
    let groups: Vec<&str> = ext
        .memberships
        .iter()
        .map(|m| &*d.group(m.group).unwrap().email)
        .collect();
    assert_eq!(
        groups,
        ["inner@example.com", "mid@example.com", "outer@example.com"]
    );
    let report = report::groups(&d);
    assert!(
        report.contains(
            "offender  ext@partner.example is a user outside the internal domains, which may \
             join only from inside; via mid@example.com → inner@example.com \
             (group[0].members[0])"
        ),
        "{report}"
    );
}

#[test]
fn inheritance_records_the_nearest_ou() {
    let d = ok("
[[ou]]
path = \"/Sales/Interns\"
imap = false
[[ou]]
path = \"/Sales\"
pop = false
imap_clients = \"allowlist\"
imap_allowed_client_ids = [\"mail-app\"]
");
    let interns = d.ou_by_path("/Sales/Interns").unwrap();
    let e = &interns.effective;
    assert_eq!(
        (e.imap.value, e.imap.source.to_string()),
        (false, "ou:/Sales/Interns".to_owned())
    );
    assert_eq!(
        (e.pop.value, e.pop.source.to_string()),
        (false, "ou:/Sales".to_owned())
    );
    assert_eq!(e.imap_clients.value.to_string(), "allowlist [mail-app]");
    assert_eq!(e.password_logins.source.to_string(), "ou:/");
    assert_eq!(
        d.ous().iter().map(|o| &*o.path).collect::<Vec<_>>(),
        ["/", "/Sales", "/Sales/Interns"]
    );
}

#[test]
fn syntax_error_stops_with_line_and_column() {
    let all = errors("[[ou]]\npath = \n");
    assert_eq!(all.len(), 1);
    assert!(all[0].starts_with("line 2, column "), "{all:#?}");
}

#[test]
fn default_ou_must_exist() {
    let d = ok("[[ou]]\npath = \"/Guests\"\npop = false\n");
    assert!(d.clone().with_default_ou("/Nope").is_err());
    let d = d.with_default_ou("/Guests").unwrap();
    assert_eq!(&*d.default_ou().unwrap().path, "/Guests");
}

#[test]
fn builtin_allows_everything_from_default() {
    let d = Directory::allow_all();
    assert!(d.is_builtin());
    let root = d.default_ou().unwrap();
    assert!(root.effective.pop.value && root.effective.imap.value);
    assert!(root.effective.password_logins.value);
    assert_eq!(root.effective.imap.source.to_string(), "default");
}

// ---- [[shared_mailbox]] (issue 11) ----

#[test]
fn shared_mailbox_assignments_resolve_users_and_groups() {
    let d = ok(r#"
[[user]]
email = "alice@example.com"
ou = "/"
[[group]]
email = "crm@example.com"
members = []
[[shared_mailbox]]
address = "Office@Example.com"
upstream = "up"
grant = "office"
assigned = ["ALICE@example.com", "crm@example.com"]
"#);
    let m = d
        .shared_mailbox("office@EXAMPLE.com")
        .expect("found in any case");
    assert_eq!(&*m.address, "office@example.com");
    assert_eq!(m.assigned.len(), 2);
    assert_eq!(m.upstreams, vec![std::sync::Arc::<str>::from("up")]);
    assert!(m.protocols.is_none());
}

#[test]
fn shared_mailbox_errors_carry_their_key_paths() {
    let all = load(
        r#"
[[user]]
email = "alice@example.com"
ou = "/"
[[shared_mailbox]]
address = "alice@example.com"
upstream = "up"
grant = ""
assigned = ["nobody@example.com"]
[[shared_mailbox]]
address = "office@example.com"
upstream = "up"
grant = "g"
surprise = 1
"#,
    )
    .unwrap_err()
    .0
    .iter()
    .map(ToString::to_string)
    .collect::<Vec<_>>();
    assert!(
        all.iter()
            .any(|e| e.starts_with("shared_mailbox[0].address: ") && e.contains("also a [[user]]")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.starts_with("shared_mailbox[0].grant: ")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.starts_with("shared_mailbox[0].assigned[0]: ")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.starts_with("shared_mailbox[1]") && e.contains("surprise")),
        "{all:#?}"
    );
}
