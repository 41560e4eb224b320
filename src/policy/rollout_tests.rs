//! Issue 13 in the decision: report-only rollout, the client catalogue, routing, and what a
//! non-compliant membership may (not) do to a decision.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::directory::clients::{APPLE_IOS_MAIL_GOOGLE, THUNDERBIRD_GOOGLE};
use crate::directory::{Allow, Directory};
use Mechanism::{ImapLogin, UserPass, XOAuth2};
use Protocol::{Imap, Pop3};

const ROOT: &str = r#"
internal_domains = ["example.com"]

[[ou]]
path = "/"
pop = false
imap = true
imap_clients = "all"
password_logins = true
"#;

fn load(text: &str) -> Directory {
    match Directory::from_toml(&format!("{ROOT}\n{text}")) {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

fn attempt<'a>(user: &'a str, protocol: Protocol, mechanism: Mechanism) -> Attempt<'a> {
    Attempt {
        protocol,
        mechanism,
        user,
        token: None,
        authzid: None,
    }
}

fn day(text: &str) -> SystemTime {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(text, format).unwrap();
    d.midnight().assume_utc().into()
}

/// `enforce = false` is inherited down the tree like any setting; a refusal under it is still
/// decided (same reason and source) but not enforced; `enforce_from` switches it on at 00:00
/// UTC of that day.
#[test]
fn report_only_is_inherited_and_dated() {
    let d = load(
        "[[ou]]\npath = \"/Pilot\"\nenforce = false\n\
         [[ou]]\npath = \"/Pilot/Team\"\n\
         [[ou]]\npath = \"/Dated\"\nenforce = false\nenforce_from = \"2027-01-15\"\n\
         [[user]]\nemail = \"p@example.com\"\nou = \"/Pilot/Team\"\n\
         [[user]]\nemail = \"d@example.com\"\nou = \"/Dated\"\n\
         [[user]]\nemail = \"e@example.com\"\nou = \"/\"\n\
         [[user]]\nemail = \"s@example.com\"\nou = \"/Pilot\"\nsuspended = true\n",
    );
    let now = day("2026-12-01");
    let deny = |user| match decide(&d, &attempt(user, Pop3, UserPass)) {
        Decision::Deny(denial) => denial,
        Decision::Allow(_) => panic!("{user}: allowed"),
    };
    let p = deny("p@example.com");
    assert_eq!((p.reason, p.source.as_str()), (Reason::PopDisabled, "ou:/"));
    assert!(!p.enforced_at(now));
    assert_eq!(p.enforce.as_ref().unwrap().source.to_string(), "ou:/Pilot");
    // Enforced everywhere else.
    assert!(deny("e@example.com").enforced_at(now));
    // Dated: report only until the day, enforced from its first second.
    let dated = deny("d@example.com");
    assert!(!dated.enforced_at(now));
    assert!(!dated.enforced_at(day("2027-01-15") - Duration::from_secs(1)));
    assert!(dated.enforced_at(day("2027-01-15")));
    // A suspended account is never let through, report only or not.
    let s = deny("s@example.com");
    assert_eq!(s.reason, Reason::Suspended);
    assert!(s.enforced_at(now));
    // explain says what happens.
    let text = explain(&d, &attempt("p@example.com", Pop3, UserPass), now).to_string();
    assert!(
        text.contains(
            "decision   would_deny pop_disabled (source ou:/); report only (enforce from ou:/Pilot)"
        ),
        "{text}"
    );
    assert!(
        text.contains("enforce          off (report only)  ou:/Pilot"),
        "{text}"
    );
}

#[test]
fn enforce_keys_are_checked() {
    for (extra, path) in [
        ("enforce_from = \"2027-01-15\"\n", "ou[1].enforce_from"),
        (
            "enforce = true\nenforce_from = \"2027-01-15\"\n",
            "ou[1].enforce_from",
        ),
        (
            "enforce = false\nenforce_from = \"15.01.2027\"\n",
            "ou[1].enforce_from",
        ),
    ] {
        let e = Directory::from_toml(&format!("{ROOT}[[ou]]\npath = \"/X\"\n{extra}")).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path(), Some(path), "{e}");
    }
}

/// Allowlists take catalogue names or raw IDs; explain shows the names.
#[test]
fn allowlists_take_client_names() {
    let d = load(
        "[[ou]]\npath = \"/Sales\"\nimap_clients = \"allowlist\"\n\
         imap_allowed_client_ids = [\"apple-ios-mail\", \"thunderbird\", \"acme-mail\", \"raw-id\"]\n\
         [[user]]\nemail = \"b@example.com\"\nou = \"/Sales\"\n\
         [[client]]\nname = \"acme-mail\"\nids = [\"acme-1\", \"acme-2\"]\n",
    );
    let t = |client: &str| TokenFacts {
        user: "b@example.com".to_owned(),
        client_id: Some(client.to_owned()),
        issuer: "https://accounts.google.com".to_owned(),
        delegated: false,
    };
    for (client, ok) in [
        (APPLE_IOS_MAIL_GOOGLE, true),
        (THUNDERBIRD_GOOGLE, true),
        ("9e5f94bc-e8a4-4e73-b8be-63364c29d753", true),
        ("acme-2", true),
        ("raw-id", true),
        ("apple-ios-mail", false),
        ("other", false),
    ] {
        let token = t(client);
        let a = Attempt {
            token: Some(&token),
            ..attempt("b@example.com", Imap, XOAuth2)
        };
        assert_eq!(matches!(decide(&d, &a), Decision::Allow(_)), ok, "{client}");
        if client == APPLE_IOS_MAIL_GOOGLE {
            let text = explain(&d, &a, day("2026-12-01")).to_string();
            assert!(
                text.contains(&format!(
                    "client id  {APPLE_IOS_MAIL_GOOGLE} (apple-ios-mail)"
                )),
                "{text}"
            );
            assert!(
                text.contains("allowlist [apple-ios-mail, thunderbird, acme-mail, raw-id]"),
                "{text}"
            );
        }
    }
    // A [[client]] may not take an ID another name already has.
    let e = Directory::from_toml(&format!(
        "{ROOT}[[client]]\nname = \"mine\"\nids = [\"{APPLE_IOS_MAIL_GOOGLE}\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.0[0].path(), Some("client[0].ids[0]"), "{e}");
}

/// `upstream`: the user's own beats a group policy's, which beats the OU's, inherited down the
/// tree; a non-compliant membership does not route.
#[test]
fn routes_are_inherited_with_their_source() {
    let d = load(
        "[[ou]]\npath = \"/New\"\nupstream = \"new\"\n\
         [[ou]]\npath = \"/New/Team\"\n\
         [[ou]]\npath = \"/Old\"\n\
         [[user]]\nemail = \"n@example.com\"\nou = \"/New/Team\"\n\
         [[user]]\nemail = \"o@example.com\"\nou = \"/Old\"\n\
         [[user]]\nemail = \"g@example.com\"\nou = \"/Old\"\n\
         [[user]]\nemail = \"u@example.com\"\nou = \"/New\"\nupstream = { imap = \"own\" }\n\
         [[user]]\nemail = \"x@partner.example\"\nou = \"/Old\"\n\
         [[group]]\nemail = \"movers@example.com\"\nmembers = [\"g@example.com\", \"x@partner.example\"]\n\
         internal_only = true\n[group.policy]\npriority = 1\nupstream = \"moved\"\n",
    );
    let r = |u| route(&d, u).map(|r| (r.value.to_string(), r.source.to_string()));
    assert_eq!(r("n@example.com"), Some(("new".into(), "ou:/New".into())));
    assert_eq!(r("o@example.com"), None);
    assert_eq!(
        r("g@example.com"),
        Some(("moved".into(), "group:movers@example.com".into()))
    );
    assert_eq!(r("u@example.com"), Some(("imap own".into(), "user".into())));
    assert_eq!(r("x@partner.example"), None);
}

fn restriction() -> impl Strategy<Value = [Allow; 3]> {
    let a = || prop_oneof![Just(Allow::No), Just(Allow::Internal), Just(Allow::Any)];
    [a(), a(), a()]
}

/// Everything a group policy can set, each maybe.
fn policy() -> impl Strategy<Value = String> {
    let b = || proptest::option::of(any::<bool>());
    (b(), b(), proptest::option::of(0u8..3), b(), b()).prop_map(|(pop, imap, clients, pw, enf)| {
        let mut s = String::new();
        for (k, v) in [
            ("pop", pop),
            ("imap", imap),
            ("password_logins", pw),
            ("enforce", enf),
        ] {
            if let Some(v) = v {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        match clients {
            Some(0) => s.push_str("imap_clients = \"all\"\n"),
            Some(1) => {
                s.push_str("imap_clients = \"allowlist\"\nimap_allowed_client_ids = [\"app\"]\n")
            }
            Some(_) => s.push_str(
                "imap_clients = \"allowlist\"\nimap_allowed_client_ids = [\"app\", \"other\"]\n",
            ),
            None => {}
        }
        s
    })
}

fn outcomes(d: &Directory, user: &str) -> Vec<bool> {
    let now = day("2026-12-01");
    let mut out = Vec::new();
    for protocol in [Imap, Pop3] {
        for client in [None, Some("app"), Some("other")] {
            let token = client.map(|c| TokenFacts {
                user: user.to_owned(),
                client_id: Some(c.to_owned()),
                issuer: "i".to_owned(),
                delegated: false,
            });
            let mechanism = match (protocol, &token) {
                (_, Some(_)) => XOAuth2,
                (Imap, None) => ImapLogin,
                (Pop3, None) => UserPass,
            };
            let a = Attempt {
                token: token.as_ref(),
                ..attempt(user, protocol, mechanism)
            };
            // What gets through: allowed, or refused only in report-only mode.
            out.push(match decide(d, &a) {
                Decision::Allow(_) => true,
                Decision::Deny(denial) => !denial.enforced_at(now),
            });
        }
    }
    out
}

proptest! {
    /// A member that breaks a group's restriction never gets through because of that group's
    /// policy: whatever goes through with the membership goes through without it. (It may
    /// still lose access through it.)
    #[test]
    fn a_non_compliant_member_never_gains_through_the_group(
        ou in policy(),
        group in policy(),
        r in restriction(),
        service in any::<bool>(),
        external in any::<bool>(),
    ) {
        let email = if external { "m@partner.example" } else { "m@example.com" };
        let kind = if service { "service" } else { "user" };
        let text = |members: &str| format!(
            "[[ou]]\npath = \"/X\"\n{ou}\n[[user]]\nemail = \"{email}\"\nou = \"/X\"\nkind = \"{kind}\"\n\
             [[group]]\nemail = \"g@example.com\"\nmembers = [{members}]\n\
             member_restriction = {{ user = \"{}\", service = \"{}\", group = \"{}\" }}\n\
             [group.policy]\npriority = 1\n{group}",
            r[0].as_str(), r[1].as_str(), r[2].as_str()
        );
        let with = load(&text(&format!("\"{email}\"")));
        let without = load(&text(""));
        let compliant = with.principal(email).unwrap().memberships[0].compliant;
        if !compliant {
            let (a, b) = (outcomes(&with, email), outcomes(&without, email));
            for (w, wo) in a.iter().zip(&b) {
                prop_assert!(!w || *wo, "gained through a group it breaks: {:?} vs {:?}", a, b);
            }
        }
    }
}
