//! Membership restrictions as the hosted console applies them (issue 13): per member kind and
//! origin, groups only from inside a restricted group, a child at least as strict as its
//! parent, "added" judged against the running directory, and the safe meaning of a
//! non-compliant membership.

use proptest::prelude::*;

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

const KINDS: [MemberKind; 3] = [MemberKind::User, MemberKind::Service, MemberKind::Group];

#[track_caller]
fn load(text: &str) -> Directory {
    match Directory::from_toml(&format!("{ROOT}\n{text}")) {
        Ok(d) => d,
        Err(e) => panic!("expected to load, got:\n{e}\n---\n{text}"),
    }
}

/// `member_restriction = { user = "internal", ... }` admitting `kinds` from `origin`.
fn restriction_toml(kinds: &[MemberKind], origin: Allow) -> String {
    let parts: Vec<String> = kinds
        .iter()
        .map(|k| format!("{} = \"{}\"", k.as_str(), origin.as_str()))
        .collect();
    format!("member_restriction = {{ {} }}\n", parts.join(", "))
}

/// The seven restrictions the console's kind checkboxes make (every non-empty set of kinds),
/// each with and without "internal only", against a member of every kind from inside and
/// outside: the rule broken, the state, the membership's standing, and add-versus-already-there
/// on reload.
#[test]
fn seven_restrictions_by_member_kind_and_origin() {
    let mut rows = 0;
    for mask in 1u8..8 {
        let allowed: Vec<MemberKind> = KINDS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, &k)| k)
            .collect();
        for origin in [Allow::Any, Allow::Internal] {
            let restriction = restriction_toml(&allowed, origin);
            let open = allowed.len() == 3 && origin == Allow::Any;
            for kind in KINDS {
                for external in [false, true] {
                    let email = if external {
                        "m@partner.example"
                    } else {
                        "m@example.com"
                    };
                    // A member group carries the same restriction, so only kind and origin count.
                    let member = match kind {
                        MemberKind::Group => {
                            format!("[[group]]\nemail = \"{email}\"\n{restriction}")
                        }
                        k => format!(
                            "[[user]]\nemail = \"{email}\"\nou = \"/\"\nkind = \"{}\"\n",
                            k.as_str()
                        ),
                    };
                    let group = |members: &str| {
                        format!(
                            "[[group]]\nemail = \"g@example.com\"\nmembers = [{members}]\n\
                             {restriction}[group.policy]\npriority = 1\npop = false\n\n{member}"
                        )
                    };
                    let with = load(&group(&format!("\"{email}\"")));
                    let without = load(&group(""));
                    let want = if !allowed.contains(&kind) {
                        Some(Rule::Kind)
                    } else if external
                        && (origin == Allow::Internal || (kind == MemberKind::Group && !open))
                    {
                        Some(Rule::External)
                    } else {
                        None
                    };
                    let case = format!("{allowed:?} {origin:?} / {kind:?} external={external}");
                    let g = with.group_by_email("g@example.com").unwrap();
                    let got: Vec<Rule> = g.compliance.offenders.iter().map(|o| o.rule).collect();
                    assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{case}");
                    let state = if want.is_some() {
                        Compliance::NonCompliant
                    } else {
                        Compliance::Compliant
                    };
                    assert_eq!(g.compliance.state, state, "{case}");
                    assert_eq!(g.restriction.is_open(), open, "{case}");
                    // Added on this reload: refused at its key path. Already there: reported.
                    let added = with.added_offenders(&without);
                    assert_eq!(
                        added.len(),
                        usize::from(want.is_some()),
                        "{case}: {added:?}"
                    );
                    if let Some(e) = added.first() {
                        assert_eq!(e.path(), Some("group[0].members[0]"), "{case}");
                    }
                    assert!(with.added_offenders(&with).is_empty(), "{case}");
                    if kind != MemberKind::Group {
                        let p = with.principal(email).unwrap();
                        assert_eq!(p.memberships[0].compliant, want.is_none(), "{case}");
                        // pop = false from the group policy takes access away either way.
                        assert!(!p.effective.pop.value, "{case}");
                    }
                    rows += 1;
                }
            }
        }
    }
    assert_eq!(rows, 7 * 2 * 3 * 2);
}

#[test]
fn queries_read_like_the_console() {
    let r = |u, s, g| Restriction::new(u, s, g).query();
    assert_eq!(r(Allow::Any, Allow::Any, Allow::Any), "true");
    assert_eq!(
        r(Allow::Internal, Allow::No, Allow::No),
        "member.type == user && member.internal"
    );
    // "External users, but only internal service accounts and groups."
    assert_eq!(
        r(Allow::Any, Allow::Internal, Allow::Internal),
        "member.type == user || (member.type == service && member.internal) || \
         (member.type == group && member.internal)"
    );
    // A restricted group admits groups only from inside, even when written "any".
    assert_eq!(
        r(Allow::Internal, Allow::Any, Allow::Any),
        "(member.type == user && member.internal) || member.type == service || \
         (member.type == group && member.internal)"
    );
    assert_eq!(r(Allow::No, Allow::No, Allow::No), "false");
}

#[test]
fn member_restriction_and_the_old_keys_are_exclusive() {
    let e = Directory::from_toml(&format!(
        "{ROOT}[[group]]\nemail = \"g@example.com\"\ninternal_only = true\n\
         member_restriction = {{ user = \"any\" }}\n"
    ))
    .unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].path(), Some("group[0].member_restriction"));
}

/// A child that drops one of its parent's restrictions makes the parent non-compliant even
/// while every member complies; one that carries them all does not.
#[test]
fn a_child_must_carry_its_parents_restrictions() {
    let text = |child: &str| {
        format!(
            "[[user]]\nemail = \"a@example.com\"\nou = \"/\"\n\
             [[group]]\nemail = \"parent@example.com\"\nmembers = [\"child@example.com\"]\n\
             member_restriction = {{ user = \"internal\", group = \"internal\" }}\n\
             [[group]]\nemail = \"child@example.com\"\nmembers = [\"a@example.com\"]\n{child}"
        )
    };
    let strict = load(&text(
        "member_restriction = { user = \"internal\", group = \"internal\" }\n",
    ));
    let parent = strict.group_by_email("parent@example.com").unwrap();
    assert_eq!(parent.compliance.state, Compliance::Compliant);
    let stricter = load(&text("member_restriction = { user = \"internal\" }\n"));
    let parent = stricter.group_by_email("parent@example.com").unwrap();
    assert_eq!(parent.compliance.state, Compliance::Compliant);
    for weaker in [
        "",
        "member_restriction = { user = \"any\", group = \"internal\" }\n",
        "member_restriction = { user = \"internal\", service = \"internal\", group = \"internal\" }\n",
    ] {
        let d = load(&text(weaker));
        let parent = d.group_by_email("parent@example.com").unwrap();
        assert_eq!(
            parent.compliance.state,
            Compliance::NonCompliant,
            "{weaker}"
        );
        assert_eq!(parent.compliance.offenders.len(), 1, "{weaker}");
        assert_eq!(parent.compliance.offenders[0].rule, Rule::Weaker);
        // a@example.com complies, but arrives only through the non-compliant child.
        let a = d.principal("a@example.com").unwrap();
        let m = a
            .memberships
            .iter()
            .find(|m| d.group(m.group).unwrap().email.as_ref() == "parent@example.com")
            .unwrap();
        assert!(!m.compliant, "{weaker}");
    }
}

/// Reload: a violating member new to the group is refused at its key path; the same member
/// already in the running group (the restriction was added later) is only reported. A member
/// of a group new in this file counts as added.
#[test]
fn added_versus_already_there_on_reload() {
    let users = "[[user]]\nemail = \"in@example.com\"\nou = \"/\"\n\
                 [[user]]\nemail = \"ext@partner.example\"\nou = \"/\"\n";
    let group = |members: &str, restricted: bool| {
        format!(
            "{users}[[group]]\nemail = \"team@example.com\"\nmembers = [{members}]\n{}",
            if restricted {
                "internal_only = true\n"
            } else {
                ""
            }
        )
    };
    let before = load(&group("\"in@example.com\", \"ext@partner.example\"", false));
    // The restriction is added while the outsider is a member: reported, not refused.
    let restricted = load(&group("\"in@example.com\", \"ext@partner.example\"", true));
    assert!(restricted.added_offenders(&before).is_empty());
    let team = restricted.group_by_email("team@example.com").unwrap();
    assert_eq!(team.compliance.state, Compliance::NonCompliant);
    // The outsider is added to an already restricted group: refused, with its path.
    let running = load(&group("\"in@example.com\"", true));
    let added = restricted.added_offenders(&running);
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0].path(), Some("group[0].members[1]"));
    assert!(
        added[0].to_string().contains("ext@partner.example"),
        "{}",
        added[0]
    );
    // A group new in this file: every member is added.
    let empty = load(users);
    assert_eq!(restricted.added_offenders(&empty).len(), 1);
    // Adding a compliant member next to a grandfathered offender is fine.
    let grown = load(&format!(
        "{}[[user]]\nemail = \"in2@example.com\"\nou = \"/\"\n",
        group(
            "\"in@example.com\", \"ext@partner.example\", \"in2@example.com\"",
            true
        )
    ));
    assert!(grown.added_offenders(&restricted).is_empty());
}

// ---- properties -------------------------------------------------------------------------------

/// A small organisation: principals of either kind inside or outside, groups that may nest only
/// later groups (so no cycles), each with an optional restriction.
#[derive(Debug, Clone)]
struct Org {
    /// (kind is service, external)
    principals: Vec<(bool, bool)>,
    groups: Vec<TestGroup>,
}

/// (members as principal indexes, nested group indexes, restriction)
type TestGroup = (Vec<usize>, Vec<usize>, Option<[Allow; 3]>);

fn allow() -> impl Strategy<Value = Allow> {
    prop_oneof![Just(Allow::No), Just(Allow::Internal), Just(Allow::Any)]
}

fn org() -> impl Strategy<Value = Org> {
    let principals = proptest::collection::vec((any::<bool>(), any::<bool>()), 1..5);
    let groups = proptest::collection::vec(
        (
            proptest::collection::btree_set(0usize..5, 0..4),
            proptest::collection::btree_set(0usize..4, 0..3),
            proptest::option::of([allow(), allow(), allow()]),
        ),
        1..5,
    );
    (principals, groups).prop_map(|(principals, groups)| {
        let n = principals.len();
        let g = groups.len();
        Org {
            groups: groups
                .into_iter()
                .enumerate()
                .map(|(i, (ps, gs, r))| {
                    (
                        ps.into_iter().filter(|&p| p < n).collect(),
                        gs.into_iter().filter(|&h| h > i && h < g).collect(),
                        r,
                    )
                })
                .collect(),
            principals,
        }
    })
}

fn principal_email(i: usize, external: bool) -> String {
    if external {
        format!("p{i}@partner.example")
    } else {
        format!("p{i}@example.com")
    }
}

impl Org {
    fn toml(&self, restrictions: bool) -> String {
        let mut out = String::new();
        for (i, &(service, external)) in self.principals.iter().enumerate() {
            out.push_str(&format!(
                "[[user]]\nemail = \"{}\"\nou = \"/\"\nkind = \"{}\"\n",
                principal_email(i, external),
                if service { "service" } else { "user" }
            ));
        }
        for (i, (ps, gs, r)) in self.groups.iter().enumerate() {
            let members: Vec<String> = ps
                .iter()
                .map(|&p| format!("\"{}\"", principal_email(p, self.principals[p].1)))
                .chain(gs.iter().map(|h| format!("\"g{h}@example.com\"")))
                .collect();
            out.push_str(&format!(
                "[[group]]\nemail = \"g{i}@example.com\"\nmembers = [{}]\n",
                members.join(", ")
            ));
            if let (true, Some([u, s, g])) = (restrictions, r) {
                out.push_str(&format!(
                    "member_restriction = {{ user = \"{}\", service = \"{}\", group = \"{}\" }}\n",
                    u.as_str(),
                    s.as_str(),
                    g.as_str()
                ));
            }
        }
        out
    }
}

proptest! {
    /// Adding restrictions never makes a load fail that succeeded before: members that break
    /// them are reported (non-compliant), never refused at load.
    #[test]
    fn adding_a_restriction_never_fails_a_load(org in org()) {
        let open = Directory::from_toml(&format!("{ROOT}{}", org.toml(false)));
        prop_assert!(open.is_ok(), "{:?}", open.err());
        let restricted = Directory::from_toml(&format!("{ROOT}{}", org.toml(true)));
        prop_assert!(restricted.is_ok(), "{:?}", restricted.err());
        // And on a reload from the open file, the offenders that appear were all there.
        let (open, restricted) = (open.unwrap(), restricted.unwrap());
        prop_assert!(restricted.added_offenders(&open).is_empty());
    }

    /// A child group that carries at least its parent's restrictions and complies with them
    /// itself never makes a parent that admits groups non-compliant.
    #[test]
    fn a_compliant_child_with_the_parents_restrictions_keeps_the_parent_compliant(
        org in org(),
        parent in [allow(), allow(), allow()],
    ) {
        let d = Directory::from_toml(&format!(
            "{ROOT}{}[[group]]\nemail = \"parent@example.com\"\nmembers = [\"g0@example.com\"]\n\
             member_restriction = {{ user = \"{}\", service = \"{}\", group = \"{}\" }}\n",
            org.toml(true), parent[0].as_str(), parent[1].as_str(), parent[2].as_str()
        )).unwrap();
        let child = d.group_by_email("g0@example.com").unwrap();
        let parent = d.group_by_email("parent@example.com").unwrap();
        // (The parent must admit groups at all: the child is one, from inside.)
        if parent.restriction.group != Allow::No
            && child.restriction.at_least(&parent.restriction)
            && child.compliance.state == Compliance::Compliant
        {
            prop_assert_eq!(parent.compliance.state, Compliance::Compliant,
                "{:?}", parent.compliance.offenders);
        }
    }

    /// Every principal that breaks a group's restriction has a non-compliant membership, and
    /// every non-compliant membership is explained by an offender on its way.
    #[test]
    fn offenders_and_memberships_agree(org in org()) {
        let d = Directory::from_toml(&format!("{ROOT}{}", org.toml(true))).unwrap();
        for p in d.principals() {
            for m in &p.memberships {
                let g = d.group(m.group).unwrap();
                let offends = g.compliance.offenders.iter().any(|o| o.email == p.email);
                if offends {
                    prop_assert!(!m.compliant, "{} in {}", p.email, g.email);
                }
                if !m.compliant {
                    prop_assert!(!g.compliance.offenders.is_empty());
                }
            }
        }
    }
}
