//! Policy evaluation speed on a realistic directory: 10 000 users (1 in 20 a service account),
//! 200 OUs three levels deep, 500 groups nested three deep (300 leaf groups of people, 150 that
//! nest two leaves, 50 that nest three of those), 100 of them carrying a policy.
//!
//! ```text
//! cargo bench --bench policy
//! ```
//! `decide_mix` runs 1 000 attempts per iteration (known, unknown and mixed-case users; IMAP and
//! POP3; password and OAuth), so its items/s is decisions per second on one core. `load` times
//! building the directory from TOML, which a reload pays once.

// A measuring tool, not the proxy: a broken fixture should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::LazyLock;

use divan::Bencher;
use divan::counter::ItemsCount;
use mailgate::directory::Directory;
use mailgate::policy::{self, Attempt, TokenFacts};
use mailgate::proto::{Mechanism, Protocol};

const USERS: usize = 10_000;
const ATTEMPTS: usize = 1_000;

fn main() {
    divan::main();
}

/// The directory as TOML text, deterministic.
fn text() -> String {
    let mut t = String::from(
        "internal_domains = [\"example.com\"]\n[[ou]]\npath = \"/\"\npop = false\nimap = true\n\
         imap_clients = \"all\"\npassword_logins = false\n",
    );
    let mut ous = Vec::new();
    // 1 root + 19 departments + 19 * 9 teams + 9 extra = 200 OUs.
    for d in 0..19 {
        let dept = format!("/Dept{d}");
        let _ = write!(t, "[[ou]]\npath = \"{dept}\"\n");
        match d % 3 {
            0 => t.push_str("pop = true\npassword_logins = true\n"),
            1 => t.push_str(
                "imap_clients = \"allowlist\"\nimap_allowed_client_ids = [\"apple-mail\", \
                 \"outlook\"]\n",
            ),
            _ => {}
        }
        ous.push(dept.clone());
        for s in 0..9 {
            let team = format!("{dept}/Team{s}");
            let _ = write!(t, "[[ou]]\npath = \"{team}\"\n");
            if s % 4 == 0 {
                t.push_str("imap = false\n");
            }
            ous.push(team);
        }
    }
    for x in 0..9 {
        let team = format!("/Dept0/Team0/Sub{x}");
        let _ = write!(t, "[[ou]]\npath = \"{team}\"\npop = false\n");
        ous.push(team);
    }
    assert_eq!(ous.len() + 1, 200);
    for u in 0..USERS {
        let ou = &ous[u % ous.len()];
        let _ = write!(
            t,
            "[[user]]\nemail = \"user{u}@example.com\"\nou = \"{ou}\"\n"
        );
        if u % 20 == 0 {
            t.push_str("kind = \"service\"\n");
        }
        if u % 97 == 0 {
            t.push_str("suspended = true\n");
        }
        if u % 31 == 0 {
            t.push_str("pop = false\n");
        }
    }
    // 300 leaves of ~33 users each, 150 mid groups of 2 leaves, 50 top groups of 3 mids.
    for g in 0..300 {
        let members: Vec<String> = (0..33)
            .map(|k| format!("\"user{}@example.com\"", (g * 33 + k * 7) % USERS))
            .collect();
        let _ = write!(
            t,
            "[[group]]\nemail = \"leaf{g}@example.com\"\nmembers = [{}]\n",
            members.join(", ")
        );
        policy_for(&mut t, g);
    }
    for g in 0..150 {
        let _ = write!(
            t,
            "[[group]]\nemail = \"mid{g}@example.com\"\nmembers = [\"leaf{}@example.com\", \
             \"leaf{}@example.com\"]\ninternal_only = true\n",
            2 * g,
            2 * g + 1
        );
        policy_for(&mut t, 300 + g);
    }
    for g in 0..50 {
        let _ = write!(
            t,
            "[[group]]\nemail = \"top{g}@example.com\"\nmembers = [\"mid{}@example.com\", \
             \"mid{}@example.com\", \"mid{}@example.com\"]\nallowed_member_kinds = [\"user\", \
             \"group\"]\n",
            3 * g,
            3 * g + 1,
            3 * g + 2
        );
        policy_for(&mut t, 450 + g);
    }
    t
}

/// One group in five carries a policy; priorities are unique.
fn policy_for(t: &mut String, g: usize) {
    if !g.is_multiple_of(5) {
        return;
    }
    let _ = write!(t, "[group.policy]\npriority = {g}\n");
    match g % 3 {
        0 => t.push_str("imap = true\n"),
        1 => t.push_str("password_logins = true\n"),
        _ => t.push_str("imap_clients = \"all\"\npop = true\n"),
    }
}

static TEXT: LazyLock<String> = LazyLock::new(text);
static DIRECTORY: LazyLock<Directory> =
    LazyLock::new(|| Directory::from_toml(&TEXT).expect("bench directory loads"));

struct Case {
    protocol: Protocol,
    mechanism: Mechanism,
    user: String,
    token: Option<TokenFacts>,
}

static CASES: LazyLock<Vec<Case>> = LazyLock::new(|| {
    (0..ATTEMPTS)
        .map(|i| {
            let n = (i * 7919) % (USERS + USERS / 10);
            // One in eleven is not in the directory; one in ten arrives in mixed case.
            let mut user = format!("user{n}@example.com");
            if i % 10 == 0 {
                user = user.to_uppercase();
            }
            let protocol = if i % 3 == 0 {
                Protocol::Pop3
            } else {
                Protocol::Imap
            };
            let (mechanism, token) = match i % 4 {
                0 | 1 => (
                    if protocol == Protocol::Imap {
                        Mechanism::ImapLogin
                    } else {
                        Mechanism::UserPass
                    },
                    None,
                ),
                2 => (Mechanism::Plain, None),
                _ => (
                    Mechanism::XOAuth2,
                    Some(TokenFacts {
                        user: user.clone(),
                        client_id: Some(if i % 8 == 3 { "apple-mail" } else { "other" }.into()),
                        issuer: "https://idp.example.com".into(),
                        delegated: i % 40 == 3,
                    }),
                ),
            };
            Case {
                protocol,
                mechanism,
                user,
                token,
            }
        })
        .collect()
});

#[divan::bench]
fn decide_mix(bencher: Bencher) {
    let directory = &*DIRECTORY;
    let cases = &*CASES;
    bencher.counter(ItemsCount::new(cases.len())).bench(|| {
        for c in cases {
            let attempt = Attempt {
                protocol: c.protocol,
                mechanism: c.mechanism,
                user: &c.user,
                token: c.token.as_ref(),
                authzid: None,
            };
            let _ = black_box(policy::decide(directory, black_box(&attempt)));
        }
    });
}

#[divan::bench]
fn explain_one(bencher: Bencher) {
    let directory = &*DIRECTORY;
    bencher.bench(|| {
        let attempt = Attempt {
            protocol: Protocol::Imap,
            mechanism: Mechanism::ImapLogin,
            user: black_box("user1234@example.com"),
            token: None,
            authzid: None,
        };
        black_box(policy::explain(
            directory,
            &attempt,
            std::time::SystemTime::now(),
        ))
    });
}

#[divan::bench(sample_count = 10)]
fn load(bencher: Bencher) {
    let text = &*TEXT;
    bencher.bench(|| Directory::from_toml(black_box(text)).expect("loads"));
}
