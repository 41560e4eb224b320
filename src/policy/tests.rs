//! Decision order for every reason code, password vs OAuth, POP vs IMAP, default OU, case; the
//! disclosure rule; property tests of inheritance, user switches, priorities and restrictions.

use proptest::prelude::*;

use super::*;
use crate::directory::Directory;

/// A small organisation exercising every step of the decision.
const ORG: &str = r#"
internal_domains = ["example.com"]

[[ou]]
path = "/"
pop = false
imap = true
imap_clients = "all"
password_logins = false

[[ou]]
path = "/Eng"
pop = true
password_logins = true

[[ou]]
path = "/Sales"
pop = true
password_logins = true
imap_clients = "allowlist"
imap_allowed_client_ids = ["apple-mail"]

[[ou]]
path = "/Sales/Interns"
imap = false

[[user]]
email = "alice@example.com"
ou = "/Eng"

[[user]]
email = "bob@example.com"
ou = "/Sales"

[[user]]
email = "carol@example.com"
ou = "/Sales/Interns"

[[user]]
email = "dave@example.com"
ou = "/Eng"
imap = false

[[user]]
email = "erin@example.com"
ou = "/Eng"
suspended = true

[[user]]
email = "root@example.com"
ou = "/"

[[user]]
email = "svc@example.com"
ou = "/Sales"
kind = "service"

[[user]]
email = "frank@example.com"
ou = "/Sales/Interns"

[[group]]
email = "pilot@example.com"
members = ["frank@example.com"]

[group.policy]
priority = 10
imap = true
imap_clients = "all"
"#;

fn org() -> Directory {
    Directory::from_toml(ORG).unwrap()
}

fn token(user: &str, client: Option<&str>, delegated: bool) -> TokenFacts {
    TokenFacts {
        user: user.to_owned(),
        client_id: client.map(str::to_owned),
        issuer: "https://idp.example.com".to_owned(),
        delegated,
    }
}

/// `(reason or "ok", source)` of one attempt.
fn outcome(
    d: &Directory,
    protocol: Protocol,
    mechanism: Mechanism,
    user: &str,
    token: Option<&TokenFacts>,
) -> (String, String) {
    let attempt = Attempt {
        protocol,
        mechanism,
        user,
        token,
        authzid: None,
    };
    let decision = decide(d, &attempt);
    // decide and explain are the same evaluation.
    assert_eq!(
        explain(d, &attempt, std::time::SystemTime::now()).decision,
        decision
    );
    match decision {
        Decision::Allow(p) => ("ok".to_owned(), p.source),
        Decision::Deny(d) => (d.reason.as_str().to_owned(), d.source),
    }
}

use Mechanism::{ImapLogin, Login, OAuthBearer, Plain, UserPass, XOAuth2};
use Protocol::{Imap, Pop3};

/// protocol, mechanism, user, token, expected reason, expected source.
type Row<'a> = (
    Protocol,
    Mechanism,
    &'a str,
    Option<TokenFacts>,
    &'a str,
    &'a str,
);

#[test]
fn decision_order_table() {
    let d = org();
    let apple = |u: &str| token(u, Some("apple-mail"), false);
    let other = |u: &str| token(u, Some("thunderbird"), false);
    let no_client = |u: &str| token(u, None, false);
    let delegated = |u: &str| token(u, Some("apple-mail"), true);
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        // step 1
        (Imap, ImapLogin, "nobody@example.com", None, "unknown_user", "default"),
        (Imap, XOAuth2, "nobody@example.com", Some(apple("nobody@example.com")), "unknown_user", "default"),
        (Pop3, UserPass, "erin@example.com", None, "suspended", "user"),
        (Imap, OAuthBearer, "erin@example.com", Some(apple("erin@example.com")), "suspended", "user"),
        // step 2: user switch, OU, group
        (Imap, ImapLogin, "dave@example.com", None, "imap_disabled", "user"),
        (Pop3, UserPass, "dave@example.com", None, "ok", "ou:/Eng"),
        (Imap, ImapLogin, "carol@example.com", None, "imap_disabled", "ou:/Sales/Interns"),
        (Imap, XOAuth2, "carol@example.com", Some(apple("carol@example.com")), "imap_disabled", "ou:/Sales/Interns"),
        (Pop3, UserPass, "root@example.com", None, "pop_disabled", "ou:/"),
        (Pop3, XOAuth2, "root@example.com", Some(apple("root@example.com")), "pop_disabled", "ou:/"),
        // step 3: password mechanisms
        (Imap, ImapLogin, "root@example.com", None, "password_login_disabled", "ou:/"),
        (Imap, Plain, "root@example.com", None, "password_login_disabled", "ou:/"),
        (Imap, Login, "root@example.com", None, "password_login_disabled", "ou:/"),
        (Imap, ImapLogin, "alice@example.com", None, "ok", "ou:/"),
        (Pop3, UserPass, "alice@example.com", None, "ok", "ou:/Eng"),
        (Pop3, Plain, "alice@example.com", None, "ok", "ou:/Eng"),
        // the allowlist applies to IMAP only; POP accepts password clients when allowed
        (Imap, ImapLogin, "bob@example.com", None, "client_not_allowed", "ou:/Sales"),
        (Imap, Plain, "bob@example.com", None, "client_not_allowed", "ou:/Sales"),
        (Pop3, UserPass, "bob@example.com", None, "ok", "ou:/Sales"),
        (Pop3, Login, "bob@example.com", None, "ok", "ou:/Sales"),
        // step 4: OAuth
        // issue 13 item 5: an allowlisted client names the allowlist's source, not the IMAP
        // switch's
        (Imap, XOAuth2, "bob@example.com", Some(apple("bob@example.com")), "ok", "ou:/Sales"),
        (Imap, OAuthBearer, "bob@example.com", Some(apple("bob@example.com")), "ok", "ou:/Sales"),
        (Imap, XOAuth2, "bob@example.com", Some(other("bob@example.com")), "client_not_allowed", "ou:/Sales"),
        (Imap, XOAuth2, "bob@example.com", Some(no_client("bob@example.com")), "client_not_allowed", "ou:/Sales"),
        (Pop3, XOAuth2, "bob@example.com", Some(other("bob@example.com")), "ok", "ou:/Sales"),
        (Imap, XOAuth2, "bob@example.com", Some(apple("alice@example.com")), "token_user_mismatch", "token"),
        (Imap, XOAuth2, "bob@example.com", None, "invalid_token", "token"),
        (Imap, XOAuth2, "svc@example.com", Some(delegated("svc@example.com")), "delegation_not_supported", "ou:/Sales"),
        // client check comes before the delegation check (decision step 4 order, docs/policy.md)
        (Imap, XOAuth2, "svc@example.com", Some(token("svc@example.com", Some("x"), true)), "client_not_allowed", "ou:/Sales"),
        // no allowlist: delegation and any client are fine
        (Imap, XOAuth2, "alice@example.com", Some(token("alice@example.com", Some("x"), true)), "ok", "ou:/"),
        // OAuth is not a password login: password_logins off does not matter
        (Imap, XOAuth2, "root@example.com", Some(other("root@example.com")), "ok", "ou:/"),
        // group policy beats the OU
        (Imap, XOAuth2, "frank@example.com", Some(other("frank@example.com")), "ok", "group:pilot@example.com"),
        (Imap, ImapLogin, "frank@example.com", None, "ok", "group:pilot@example.com"),
        // case-insensitive emails, SASL user vs token user too
        (Imap, ImapLogin, "Alice@EXAMPLE.com", None, "ok", "ou:/"),
        (Imap, XOAuth2, "BOB@example.com", Some(apple("bob@EXAMPLE.COM")), "ok", "ou:/Sales"),
    ];
    for (protocol, mechanism, user, token, reason, source) in &table {
        let got = outcome(&d, *protocol, *mechanism, user, token.as_ref());
        assert_eq!(
            (got.0.as_str(), got.1.as_str()),
            (*reason, *source),
            "{protocol:?} {mechanism:?} {user} {token:?}"
        );
    }
    // Every policy reason code of decision steps 1-4 (docs/policy.md) appears in the table.
    for r in [
        Reason::UnknownUser,
        Reason::Suspended,
        Reason::ImapDisabled,
        Reason::PopDisabled,
        Reason::PasswordLoginDisabled,
        Reason::ClientNotAllowed,
        Reason::InvalidToken,
        Reason::TokenUserMismatch,
        Reason::DelegationNotSupported,
        Reason::Ok,
    ] {
        assert!(
            table.iter().any(|row| row.4 == r.as_str()),
            "{r:?} not covered"
        );
    }
}

#[test]
fn default_ou_takes_unknown_users() {
    let d = org().with_default_ou("/Eng").unwrap();
    assert_eq!(
        outcome(&d, Pop3, UserPass, "stranger@example.com", None),
        ("ok".to_owned(), "ou:/Eng".to_owned())
    );
    let d = org().with_default_ou("/").unwrap();
    assert_eq!(
        outcome(&d, Imap, ImapLogin, "stranger@example.com", None),
        ("password_login_disabled".to_owned(), "ou:/".to_owned())
    );
    let attempt = Attempt {
        protocol: Imap,
        mechanism: ImapLogin,
        user: "x@y",
        token: None,
        authzid: None,
    };
    assert_eq!(
        explain(&d, &attempt, std::time::SystemTime::now()).standing,
        Standing::DefaultOu { ou: "/".into() }
    );
}

#[test]
fn builtin_directory_allows_every_login() {
    let d = Directory::allow_all();
    for (p, m) in [(Imap, ImapLogin), (Pop3, UserPass), (Imap, Plain)] {
        assert_eq!(
            outcome(&d, p, m, "anyone@anywhere.example", None),
            ("ok".to_owned(), "default".to_owned())
        );
    }
    let t = token("a@b.example", Some("c"), true);
    assert_eq!(outcome(&d, Imap, XOAuth2, "a@b.example", Some(&t)).0, "ok");
}

#[test]
fn permit_and_denial_carry_the_ou() {
    let d = org();
    let attempt = Attempt {
        protocol: Imap,
        mechanism: ImapLogin,
        user: "carol@example.com",
        token: None,
        authzid: None,
    };
    let Decision::Deny(denial) = decide(&d, &attempt) else {
        panic!("deny")
    };
    assert_eq!(denial.ou.as_deref(), Some("/Sales/Interns"));
    let attempt = Attempt {
        user: "nobody@example.com",
        ..attempt
    };
    let Decision::Deny(denial) = decide(&d, &attempt) else {
        panic!("deny")
    };
    assert_eq!(denial.ou, None);
}

#[test]
fn explanation_shows_sources_groups_and_decision() {
    let d = org();
    let t = token("frank@example.com", Some("thunderbird"), false);
    let attempt = Attempt {
        protocol: Imap,
        mechanism: XOAuth2,
        user: "frank@example.com",
        token: Some(&t),
        authzid: None,
    };
    let text = explain(&d, &attempt, std::time::SystemTime::now()).to_string();
    for needle in [
        "user       frank@example.com (user, ou /Sales/Interns; from file:)",
        "client id  thunderbird",
        "imap             on              group:pilot@example.com",
        "pop              on              ou:/Sales",
        "enforce          on              default",
        "upstream         the listener's  listener",
        "pilot@example.com  direct; policy priority 10",
        "decision   allow (source group:pilot@example.com)",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
}

// ---- disclosure -------------------------------------------------------------------------------

fn denial(reason: Reason) -> Denial {
    Denial {
        reason,
        source: "ou:/Sales".to_owned(),
        ou: Some("/Sales".into()),
        enforce: None,
    }
}

/// With the default, an unknown user, a disabled user and a refused password client get the
/// same answer a wrong password gets from the upstream (relayed as "Authentication failed").
#[test]
fn password_refusals_are_indistinguishable_by_default() {
    let d = org();
    let mut replies = Vec::new();
    for (user, protocol) in [
        ("nobody@example.com", Imap),
        ("erin@example.com", Imap),
        ("carol@example.com", Imap),
        ("bob@example.com", Imap),
        ("root@example.com", Pop3),
    ] {
        let attempt = Attempt {
            protocol,
            mechanism: ImapLogin,
            user,
            token: None,
            authzid: None,
        };
        let Decision::Deny(denial) = decide(&d, &attempt) else {
            panic!("{user}")
        };
        replies.push(reply(
            &denial,
            protocol,
            Identity::of(ImapLogin),
            DiscloseReasons::default(),
            "it-help@example.com",
        ));
    }
    for r in &replies {
        assert_eq!(r.class, ReplyClass::Authentication);
        assert_eq!(r.text, refusal::GENERIC_FAILURE);
        assert!(!r.specific);
    }
}

#[test]
fn proven_identity_or_always_gets_the_specific_text() {
    let d = denial(Reason::ImapDisabled);
    let proven = reply(
        &d,
        Imap,
        Identity::of(XOAuth2),
        DiscloseReasons::Never,
        "it-help@example.com",
    );
    assert_eq!(proven.class, ReplyClass::Authorization);
    assert_eq!(
        proven.text,
        "IMAP access is turned off for your account by your organisation. Ask it-help@example.com."
    );
    let always = reply(
        &d,
        Imap,
        Identity::Unproven,
        DiscloseReasons::Always,
        "it-help@example.com",
    );
    assert_eq!(always, proven);
    // Temporary failures are never disguised as bad credentials.
    let temp = reply(
        &denial(Reason::IdpUnavailable),
        Imap,
        Identity::Unproven,
        DiscloseReasons::Never,
        "",
    );
    assert_eq!(temp.class, ReplyClass::Unavailable);
}

#[test]
fn refusal_texts_name_what_is_off_and_whom_to_ask() {
    let ask = "Ask it-help@example.com.";
    for (reason, protocol, needle) in [
        (Reason::PopDisabled, Pop3, "POP access is turned off"),
        (Reason::Suspended, Imap, "suspended"),
        (
            Reason::PasswordLoginDisabled,
            Pop3,
            "does not allow POP logins with a password",
        ),
        (
            Reason::ClientNotAllowed,
            Imap,
            "not on your organisation's list of allowed IMAP apps",
        ),
        (
            Reason::DelegationNotSupported,
            Imap,
            "domain-wide delegation",
        ),
        (Reason::UnknownUser, Imap, "not set up"),
    ] {
        let text = refusal_text(&denial(reason), protocol, "it-help@example.com");
        assert!(
            text.contains(needle) && text.ends_with(ask),
            "{reason:?}: {text}"
        );
        // The audit record has the source; the person gets no directory layout.
        assert!(!text.contains("/Sales"), "{text}");
        assert!(!text.contains('\r') && !text.contains('\n'));
    }
    let text = refusal_text(&denial(Reason::ImapDisabled), Imap, "  evil\r\nA001 OK \n");
    assert!(!text.contains('\r') && !text.contains('\n'), "{text}");
    assert!(
        refusal_text(&denial(Reason::ImapDisabled), Imap, "").ends_with("Ask your administrator.")
    );
}

/// Issue 11: no enumeration of shared mailboxes. A token presented for a name that is not the
/// token's user reads exactly like an unassigned shared mailbox and like a wrong password, on
/// both protocols, so its holder cannot tell which names are shared mailboxes.
#[test]
fn a_token_for_another_name_reads_like_an_unassigned_mailbox() {
    for protocol in [Imap, Pop3] {
        let mismatch = refusal_text(&denial(Reason::TokenUserMismatch), protocol, "it@x");
        let unassigned = refusal_text(&denial(Reason::MailboxNotAssigned), protocol, "it@x");
        let wrong_password = refusal_text(&denial(Reason::UpstreamRejected), protocol, "it@x");
        assert_eq!(mismatch, unassigned);
        assert_eq!(mismatch, wrong_password);
        // The reply a proven (token) identity gets, even with reasons disclosed: the generic
        // credentials failure, as the session sends for an unassigned shared mailbox.
        let r = reply(
            &denial(Reason::TokenUserMismatch),
            protocol,
            Identity::Proven,
            DiscloseReasons::Always,
            "it@x",
        );
        assert_eq!(r.class, ReplyClass::Authentication);
        assert_eq!(r.text, refusal::GENERIC_FAILURE);
        assert!(!r.specific);
    }
}

// ---- properties -------------------------------------------------------------------------------

fn toml_bool(v: Option<bool>, key: &str) -> String {
    v.map(|v| format!("{key} = {v}\n")).unwrap_or_default()
}

/// One OU or group policy's settings; `None` leaves a value unset.
#[derive(Debug, Clone)]
struct Set {
    pop: Option<bool>,
    imap: Option<bool>,
    allowlist: Option<bool>,
    password: Option<bool>,
}

impl Set {
    fn toml(&self) -> String {
        let clients = match self.allowlist {
            None => String::new(),
            Some(false) => "imap_clients = \"all\"\n".to_owned(),
            Some(true) => {
                "imap_clients = \"allowlist\"\nimap_allowed_client_ids = [\"app\"]\n".to_owned()
            }
        };
        format!(
            "{}{}{clients}{}",
            toml_bool(self.pop, "pop"),
            toml_bool(self.imap, "imap"),
            toml_bool(self.password, "password_logins")
        )
    }
}

fn set() -> impl Strategy<Value = Set> {
    let o = || proptest::option::of(any::<bool>());
    (o(), o(), o(), o()).prop_map(|(pop, imap, allowlist, password)| Set {
        pop,
        imap,
        allowlist,
        password,
    })
}

fn full_set() -> impl Strategy<Value = Set> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| Set {
        pop: Some(a),
        imap: Some(b),
        allowlist: Some(c),
        password: Some(d),
    })
}

/// Every kind of attempt worth distinguishing, for user `u`.
fn attempts(u: &str) -> Vec<(Protocol, Mechanism, Option<TokenFacts>)> {
    let mut out = vec![
        (Imap, ImapLogin, None),
        (Pop3, UserPass, None),
        (Imap, Plain, None),
    ];
    for p in [Imap, Pop3] {
        for client in [Some("app"), Some("other"), None] {
            for delegated in [false, true] {
                out.push((p, XOAuth2, Some(token(u, client, delegated))));
            }
        }
    }
    out
}

fn decisions(d: &Directory, u: &str) -> Vec<(Reason, String)> {
    attempts(u)
        .into_iter()
        .map(|(protocol, mechanism, t)| {
            let attempt = Attempt {
                protocol,
                mechanism,
                user: u,
                token: t.as_ref(),
                authzid: None,
            };
            match decide(d, &attempt) {
                Decision::Allow(p) => (Reason::Ok, p.source),
                Decision::Deny(d) => (d.reason, d.source),
            }
        })
        .collect()
}

/// Root, `/P` with `parent`, `/P/C` setting nothing, a user in each, both in a group carrying
/// `group` (when it sets anything) with `priority`.
fn family(root: &Set, parent: &Set, group: &Set, switches: &str) -> String {
    format!(
        "internal_domains = [\"example.com\"]\n\
         [[ou]]\npath = \"/\"\n{}\n\
         [[ou]]\npath = \"/P\"\n{}\n\
         [[ou]]\npath = \"/P/C\"\n\n\
         [[user]]\nemail = \"p@example.com\"\nou = \"/P\"\n{switches}\n\
         [[user]]\nemail = \"c@example.com\"\nou = \"/P/C\"\n{switches}\n\
         [[group]]\nemail = \"g@example.com\"\nmembers = [\"p@example.com\", \"c@example.com\"]\n\
         [group.policy]\npriority = 7\n{}",
        root.toml(),
        parent.toml(),
        group.toml()
    )
}

fn allowed(v: &[(Reason, String)]) -> Vec<bool> {
    v.iter().map(|(r, _)| *r == Reason::Ok).collect()
}

proptest! {
    /// An OU that sets nothing decides exactly like its parent (reason and source).
    #[test]
    fn empty_ou_decides_like_its_parent(root in full_set(), parent in set(), group in set()) {
        let d = Directory::from_toml(&family(&root, &parent, &group, "")).unwrap();
        prop_assert_eq!(decisions(&d, "p@example.com"), decisions(&d, "c@example.com"));
    }

    /// A user switch can only remove access: whatever is allowed with the switch off is allowed
    /// without it too.
    #[test]
    fn user_switch_never_grants(root in full_set(), parent in set(), group in set(),
                                pop_off in any::<bool>(), imap_off in any::<bool>()) {
        let mut switches = String::new();
        if pop_off { switches.push_str("pop = false\n"); }
        if imap_off { switches.push_str("imap = false\n"); }
        let with = Directory::from_toml(&family(&root, &parent, &group, &switches)).unwrap();
        let without = Directory::from_toml(&family(&root, &parent, &group, "")).unwrap();
        let a = allowed(&decisions(&with, "p@example.com"));
        let b = allowed(&decisions(&without, "p@example.com"));
        for (w, wo) in a.iter().zip(&b) {
            prop_assert!(!w || *wo, "switch granted access: {a:?} vs {b:?}");
        }
    }

    /// Between two groups that both set `imap`, the lower priority number wins, whatever the
    /// file order.
    #[test]
    fn lowest_priority_number_wins(p1 in 0u32..1000, p2 in 0u32..1000, v1 in any::<bool>(),
                                   v2 in any::<bool>(), flip in any::<bool>()) {
        prop_assume!(p1 != p2);
        let g = |name: &str, p: u32, v: bool| format!(
            "[[group]]\nemail = \"{name}@example.com\"\nmembers = [\"u@example.com\"]\n\
             [group.policy]\npriority = {p}\nimap = {v}\n");
        let (a, b) = (g("one", p1, v1), g("two", p2, v2));
        let groups = if flip { format!("{b}{a}") } else { format!("{a}{b}") };
        let text = format!(
            "[[ou]]\npath = \"/\"\npop = true\nimap = true\nimap_clients = \"all\"\n\
             password_logins = true\n[[user]]\nemail = \"u@example.com\"\nou = \"/\"\n{groups}");
        let d = Directory::from_toml(&text).unwrap();
        let imap = &d.principal("u@example.com").unwrap().effective.imap;
        let (want_value, want_group) = if p1 < p2 { (v1, "one") } else { (v2, "two") };
        prop_assert_eq!(imap.value, want_value);
        prop_assert_eq!(imap.source.to_string(), format!("group:{want_group}@example.com"));
    }

    /// Removing a membership restriction never turns an allowed decision into a refusal (and
    /// the directory still loads: a restriction only ever rejects).
    #[test]
    fn removing_a_restriction_never_denies(root in full_set(), parent in set(), group in set(),
                                           internal in any::<bool>(), users_only in any::<bool>()) {
        let base = family(&root, &parent, &group, "");
        let restricted = base.replacen(
            "members = [\"p@example.com\", \"c@example.com\"]\n",
            &format!(
                "members = [\"p@example.com\", \"c@example.com\"]\ninternal_only = {internal}\n{}",
                if users_only { "allowed_member_kinds = [\"user\"]\n" } else { "" }
            ),
            1,
        );
        prop_assert_ne!(&restricted, &base);
        let with = Directory::from_toml(&restricted).unwrap();
        let without = Directory::from_toml(&base).unwrap();
        for u in ["p@example.com", "c@example.com"] {
            let a = allowed(&decisions(&with, u));
            let b = allowed(&decisions(&without, u));
            for (w, wo) in a.iter().zip(&b) {
                prop_assert!(!w || *wo);
            }
        }
    }
}

#[test]
fn reason_codes_match_serde_names() {
    for r in [
        Reason::Ok,
        Reason::UnknownUser,
        Reason::Suspended,
        Reason::ImapDisabled,
        Reason::PopDisabled,
        Reason::PasswordLoginDisabled,
        Reason::ClientNotAllowed,
        Reason::InvalidToken,
        Reason::TokenUserMismatch,
        Reason::DelegationNotSupported,
        Reason::UpstreamRejected,
        Reason::UpstreamUnavailable,
        Reason::IdpUnavailable,
        Reason::RateLimited,
        Reason::ClientClosed,
    ] {
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!("\"{}\"", r.as_str())
        );
    }
}

#[test]
fn temporary_failures_are_unavailable() {
    assert_eq!(Reason::UpstreamUnavailable.class(), ReplyClass::Unavailable);
    assert_eq!(Reason::IdpUnavailable.class(), ReplyClass::Unavailable);
    assert_eq!(Reason::UpstreamRejected.class(), ReplyClass::Authentication);
    assert_eq!(Reason::ImapDisabled.class(), ReplyClass::Authorization);
}

#[test]
fn a_sasl_authorization_identity_other_than_the_user_is_refused() {
    // Issue 10 item 5, decision step 3: (authcid, authzid) → reason. alice (/Eng) may use
    // passwords over IMAP and POP; erin is suspended.
    let d = org();
    let table: [(Protocol, Mechanism, &str, Option<&str>, &str); 7] = [
        (Imap, Plain, "alice@example.com", None, "ok"),
        (
            Imap,
            Plain,
            "alice@example.com",
            Some("alice@example.com"),
            "ok",
        ),
        (
            Imap,
            Plain,
            "alice@example.com",
            Some("ALICE@example.com"),
            "ok",
        ),
        (
            Imap,
            Plain,
            "alice@example.com",
            Some("erin@example.com"),
            "mailbox_not_assigned",
        ),
        (
            Pop3,
            Plain,
            "alice@example.com",
            Some("dave@example.com"),
            "mailbox_not_assigned",
        ),
        // Earlier steps still decide first: the user's own refusal is the answer.
        (
            Imap,
            Plain,
            "erin@example.com",
            Some("alice@example.com"),
            "suspended",
        ),
        (
            Imap,
            Plain,
            "nobody@example.com",
            Some("alice@example.com"),
            "unknown_user",
        ),
    ];
    for (protocol, mechanism, user, authzid, want) in table {
        let attempt = Attempt {
            protocol,
            mechanism,
            user,
            token: None,
            authzid,
        };
        let got = match decide(&d, &attempt) {
            Decision::Allow(_) => "ok",
            Decision::Deny(denial) => denial.reason.as_str(),
        };
        assert_eq!(got, want, "{user} as {authzid:?} over {protocol:?}");
    }
    // An OAUTHBEARER `a=` naming another account than the token's is refused too (step 4).
    let t = token("alice@example.com", None, false);
    assert_eq!(
        outcome(&d, Imap, OAuthBearer, "root@example.com", Some(&t)).0,
        "token_user_mismatch"
    );
}

#[test]
fn mailbox_not_assigned_reads_like_a_wrong_password() {
    let denial = Denial {
        reason: Reason::MailboxNotAssigned,
        source: SOURCE_DEFAULT.to_owned(),
        ou: None,
        enforce: None,
    };
    let reply = reply(
        &denial,
        Imap,
        Identity::Unproven,
        DiscloseReasons::Never,
        "",
    );
    assert_eq!(reply.class, ReplyClass::Authentication);
    assert_eq!(reply.text, refusal::GENERIC_FAILURE);
}

// ---- shared mailboxes (issue 11) ----

const SHARED: &str = r#"
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
upstream = "up"
grant = "office"
assigned = ["alice@example.com", "crm@example.com"]
protocols = ["imap"]
"#;

#[test]
fn shared_mailbox_assignment_direct_nested_and_refused() {
    let d = Directory::from_toml(SHARED).unwrap();
    let alice = super::shared::open(
        &d,
        "Alice@example.com",
        "office@contoso.com",
        Protocol::Imap,
    )
    .unwrap();
    assert_eq!(alice.via, "user");
    assert_eq!(alice.source(), "shared:office@contoso.com user");
    let carol = super::shared::open(
        &d,
        "carol@example.com",
        "OFFICE@contoso.com",
        Protocol::Imap,
    )
    .unwrap();
    assert_eq!(
        carol.via,
        "group:crm@example.com via group:team@example.com"
    );
    assert_eq!(&*carol.grant, "office");
    // Not assigned, no such mailbox, protocol not offered: one reason for all three, so the
    // answer cannot tell them apart.
    for (user, mailbox, protocol) in [
        ("bob@example.com", "office@contoso.com", Protocol::Imap),
        ("alice@example.com", "nope@contoso.com", Protocol::Imap),
        ("alice@example.com", "office@contoso.com", Protocol::Pop3),
        ("stranger@example.com", "office@contoso.com", Protocol::Imap),
    ] {
        assert_eq!(
            super::shared::open(&d, user, mailbox, protocol),
            Err(Reason::MailboxNotAssigned),
            "{user} {mailbox}"
        );
    }
    assert_eq!(super::shared::assignments(&d, "carol@example.com").len(), 1);
    assert!(super::shared::assignments(&d, "bob@example.com").is_empty());
}

/// A membership that breaks a group's restriction never grants: not a group policy, and not a
/// shared mailbox assigned to the group (the safe choice of issue 13 applied to issue 11).
#[test]
fn a_non_compliant_membership_never_assigns_a_shared_mailbox() {
    // SHARED's root OU, with an organisation domain and a restricted group.
    let root = &SHARED[..SHARED.find("[[user]]").unwrap()];
    let d = Directory::from_toml(&format!(
        r#"
internal_domains = ["example.com"]
{root}
[[user]]
email = "alice@example.com"
ou = "/"
[[user]]
email = "eve@partner.org"
ou = "/"
[[group]]
email = "crm@example.com"
member_restriction = {{ user = "internal" }}
members = ["alice@example.com", "eve@partner.org"]
[[shared_mailbox]]
address = "office@contoso.com"
upstream = "up"
grant = "office"
assigned = ["crm@example.com"]
"#
    ))
    .unwrap();
    let eve = d.principal("eve@partner.org").unwrap();
    assert!(!eve.memberships[0].compliant);
    let alice = super::shared::open(
        &d,
        "alice@example.com",
        "office@contoso.com",
        Protocol::Imap,
    );
    assert_eq!(alice.unwrap().via, "group:crm@example.com");
    assert_eq!(
        super::shared::open(&d, "eve@partner.org", "office@contoso.com", Protocol::Imap),
        Err(Reason::MailboxNotAssigned)
    );
    assert!(super::shared::assignments(&d, "eve@partner.org").is_empty());
}
