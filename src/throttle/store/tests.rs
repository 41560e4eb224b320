use super::*;

const LIMITS: StoreLimits = StoreLimits {
    user_failures: 3,
    source_failures: 5,
    token_failures: 2,
    window: Duration::from_secs(600),
    block: Duration::from_secs(60),
    familiar_for: Duration::from_secs(30 * 86_400),
};
const T0: Millis = 1_700_000_000_000;

fn src(n: u8) -> SourceKey {
    SourceKey::of(IpAddr::from([192, 0, 2, n]))
}

fn pw(n: u8) -> Option<PasswordHash> {
    Some(PasswordHash([n; 16]))
}

fn user(n: u8, source: SourceKey) -> Attempt {
    Attempt::Password {
        user: UserKey::of(&format!("user{n}")),
        source,
    }
}

fn alice(source: SourceKey) -> Attempt {
    Attempt::Password {
        user: UserKey::of("alice@x"),
        source,
    }
}

fn ticket(s: &LocalStore, attempt: Attempt, now: Millis) -> Ticket {
    match s.reserve(attempt, &LIMITS, now) {
        Admission::Proceed(t) => t,
        refused => panic!("refused: {refused:?}"),
    }
}

/// One whole attempt: reserve, then settle with `outcome`.
fn attempt(s: &LocalStore, a: Attempt, outcome: Outcome, now: Millis) -> Settled {
    let t = ticket(s, a, now);
    s.settle(t, outcome, &LIMITS, now)
}

#[test]
fn reservations_count_before_the_outcome() {
    // Issue 10 item 2: attempts in flight take the slots; the limit+1st is refused at once.
    let s = LocalStore::default();
    let tickets: Vec<_> = (0..3).map(|_| ticket(&s, alice(src(1)), T0)).collect();
    assert_eq!(
        s.reserve(alice(src(1)), &LIMITS, T0),
        Admission::Refused {
            scope: Scope::User(Side::Unfamiliar),
            until: None
        }
    );
    // Each failure turns its slot into a counted failure; the third blocks.
    for (n, t) in tickets.into_iter().enumerate() {
        s.settle(t, Outcome::Failed(pw(n as u8)), &LIMITS, T0);
    }
    assert_eq!(
        s.reserve(alice(src(1)), &LIMITS, T0),
        Admission::Refused {
            scope: Scope::User(Side::Unfamiliar),
            until: Some(T0 + 60_000)
        }
    );
}

#[test]
fn success_releases_its_slot_and_keeps_the_others() {
    let s = LocalStore::default();
    let first = ticket(&s, alice(src(1)), T0);
    let _second = ticket(&s, alice(src(1)), T0);
    let _third = ticket(&s, alice(src(1)), T0);
    s.settle(first, Outcome::Succeeded, &LIMITS, T0);
    // src(1) is familiar now: its next attempt counts on the other side.
    assert_eq!(ticket(&s, alice(src(1)), T0).side, Side::Familiar);
    // The two still in flight hold the unfamiliar side's slots: one left there.
    let _ = ticket(&s, alice(src(2)), T0);
    assert!(matches!(
        s.reserve(alice(src(3)), &LIMITS, T0),
        Admission::Refused { until: None, .. }
    ));
}

#[test]
fn void_releases_without_counting() {
    let s = LocalStore::default();
    for _ in 0..10 {
        attempt(&s, alice(src(1)), Outcome::Void, T0);
    }
    let st = s.status(Some(UserKey::of("alice@x")), Some(src(1)), &LIMITS, T0);
    let user = st.user.unwrap();
    assert_eq!(user.unfamiliar, CounterStatus::default());
    assert_eq!(st.source.unwrap().password, CounterStatus::default());
}

#[test]
fn user_side_blocks_at_threshold_then_fresh_window() {
    let s = LocalStore::default();
    for n in 1..=3 {
        let settled = attempt(&s, alice(src(n)), Outcome::Failed(pw(n)), T0);
        assert_eq!(settled.failures, if n < 3 { u32::from(n) } else { 0 });
    }
    let blocked_until = T0 + 60_000;
    assert_eq!(
        s.reserve(alice(src(7)), &LIMITS, T0 + 1),
        Admission::Refused {
            scope: Scope::User(Side::Unfamiliar),
            until: Some(blocked_until)
        }
    );
    // Case of the name does not matter; another user is not affected.
    let upper = Attempt::Password {
        user: UserKey::of("ALICE@X"),
        source: src(7),
    };
    assert!(matches!(
        s.reserve(upper, &LIMITS, T0),
        Admission::Refused { .. }
    ));
    let bob = Attempt::Password {
        user: UserKey::of("bob@x"),
        source: src(7),
    };
    let _ = ticket(&s, bob, T0);
    // When the block ends, a fresh window starts.
    let t = ticket(&s, alice(src(7)), blocked_until);
    assert_eq!(
        s.settle(t, Outcome::Failed(pw(9)), &LIMITS, blocked_until)
            .failures,
        1
    );
}

#[test]
fn window_forgets_old_failures() {
    let s = LocalStore::default();
    attempt(&s, alice(src(1)), Outcome::Failed(pw(1)), T0);
    attempt(&s, alice(src(1)), Outcome::Failed(pw(2)), T0);
    let later = T0 + ms(LIMITS.window) + 1;
    let settled = attempt(&s, alice(src(1)), Outcome::Failed(pw(3)), later);
    assert_eq!(settled.failures, 1);
}

#[test]
fn familiar_source_is_not_locked_by_unfamiliar_failures() {
    let s = LocalStore::default();
    attempt(&s, alice(src(1)), Outcome::Succeeded, T0);
    // The attacker at src(2) fills the unfamiliar side.
    for n in 0..3 {
        attempt(&s, alice(src(2)), Outcome::Failed(pw(n)), T0 + 1);
    }
    assert!(matches!(
        s.reserve(alice(src(2)), &LIMITS, T0 + 2),
        Admission::Refused {
            scope: Scope::User(Side::Unfamiliar),
            ..
        }
    ));
    let t = ticket(&s, alice(src(1)), T0 + 2);
    assert_eq!(t.side, Side::Familiar);
    s.settle(t, Outcome::Succeeded, &LIMITS, T0 + 2);
    // Familiarity expires after familiar_for.
    let later = T0 + 2 + ms(LIMITS.familiar_for) + 1;
    assert_eq!(ticket(&s, alice(src(1)), later).side, Side::Unfamiliar);
}

#[test]
fn repeated_password_counts_once() {
    let s = LocalStore::default();
    let first = attempt(&s, alice(src(1)), Outcome::Failed(pw(1)), T0);
    assert_eq!(
        first,
        Settled {
            failures: 1,
            repeat: false
        }
    );
    for n in 1..30 {
        let again = attempt(&s, alice(src(1)), Outcome::Failed(pw(1)), T0 + n);
        assert_eq!(
            again,
            Settled {
                failures: 1,
                repeat: true
            }
        );
    }
    let st = s.status(Some(UserKey::of("alice@x")), Some(src(1)), &LIMITS, T0 + 30);
    assert_eq!(st.source.unwrap().password.failures, 1, "source too");
    assert_eq!(st.user.unwrap().remembered_passwords, 1);
    // A different wrong password counts; so does the first once the window forgot it.
    assert_eq!(
        attempt(&s, alice(src(1)), Outcome::Failed(pw(2)), T0 + 31).failures,
        2
    );
    let later = T0 + 30 + ms(LIMITS.window) + 1;
    assert!(!attempt(&s, alice(src(1)), Outcome::Failed(pw(1)), later).repeat);
}

#[test]
fn remembered_passwords_are_bounded() {
    let s = LocalStore::default();
    let limits = StoreLimits {
        user_failures: 0,
        source_failures: 0,
        ..LIMITS
    };
    for n in 0..20u8 {
        let t = s.reserve(alice(src(1)), &limits, T0 + u64::from(n));
        let Admission::Proceed(t) = t else { panic!() };
        s.settle(t, Outcome::Failed(pw(n)), &limits, T0 + u64::from(n));
    }
    let st = s.status(Some(UserKey::of("alice@x")), None, &limits, T0 + 20);
    assert_eq!(st.user.unwrap().remembered_passwords, REMEMBERED_PASSWORDS);
}

#[test]
fn source_blocks_across_users_and_success_does_not_clear_it() {
    let s = LocalStore::default();
    attempt(&s, user(9, src(1)), Outcome::Succeeded, T0);
    // Successes between the failures do not wash the source's count.
    for n in 0..4u8 {
        attempt(&s, user(n, src(1)), Outcome::Failed(pw(n)), T0);
        attempt(&s, user(n, src(1)), Outcome::Succeeded, T0);
    }
    attempt(&s, user(5, src(1)), Outcome::Failed(pw(5)), T0);
    assert_eq!(
        s.reserve(alice(src(1)), &LIMITS, T0),
        Admission::Refused {
            scope: Scope::Source,
            until: Some(T0 + 60_000)
        }
    );
    let _ = ticket(&s, alice(src(2)), T0);
    // Users for whom src(1) is familiar are not held to its limit, and their failures there
    // do not count on it.
    let familiar = ticket(&s, user(9, src(1)), T0);
    assert_eq!(familiar.side, Side::Familiar);
    s.settle(familiar, Outcome::Failed(pw(7)), &LIMITS, T0);
    let st = s.status(None, Some(src(1)), &LIMITS, T0);
    assert_eq!(st.source.unwrap().password.blocked_until, Some(T0 + 60_000));
}

#[test]
fn tokens_have_their_own_limit() {
    let s = LocalStore::default();
    let token = Attempt::Token { source: src(1) };
    for _ in 0..2 {
        attempt(&s, token, Outcome::Failed(None), T0);
    }
    assert!(matches!(
        s.reserve(token, &LIMITS, T0),
        Admission::Refused {
            scope: Scope::Token,
            ..
        }
    ));
    // Password logins from the same source are not affected, and vice versa.
    let _ = ticket(&s, alice(src(1)), T0);
    for n in 0..5 {
        attempt(&s, user(n, src(2)), Outcome::Failed(pw(n)), T0);
    }
    let _ = ticket(&s, Attempt::Token { source: src(2) }, T0);
}

#[test]
fn limits_apply_per_call_so_a_reload_takes_effect() {
    let s = LocalStore::default();
    attempt(&s, alice(src(1)), Outcome::Failed(pw(1)), T0);
    let lower = StoreLimits {
        user_failures: 1,
        ..LIMITS
    };
    assert!(matches!(
        s.reserve(alice(src(1)), &lower, T0),
        Admission::Refused { until: None, .. }
    ));
    let _ = ticket(&s, alice(src(1)), T0);
}

#[test]
fn unsettled_reservations_expire() {
    let s = LocalStore::default();
    for _ in 0..3 {
        let _abandoned = ticket(&s, alice(src(1)), T0);
    }
    assert!(matches!(
        s.reserve(alice(src(1)), &LIMITS, T0),
        Admission::Refused { .. }
    ));
    let _ = ticket(&s, alice(src(1)), T0 + ms(RESERVATION_TTL));
}

#[test]
fn clear_unlocks_user_and_source_but_keeps_familiarity() {
    let s = LocalStore::default();
    let alice_key = UserKey::of("alice@x");
    attempt(&s, alice(src(1)), Outcome::Succeeded, T0);
    for n in 0..3 {
        attempt(&s, alice(src(2)), Outcome::Failed(pw(n)), T0);
    }
    for n in 3..5 {
        attempt(&s, user(n, src(2)), Outcome::Failed(pw(n)), T0);
    }
    assert!(s.clear(Target::User(alice_key)));
    assert!(!s.clear(Target::User(alice_key)));
    // The source is still blocked until it is cleared too.
    assert!(matches!(
        s.reserve(alice(src(2)), &LIMITS, T0),
        Admission::Refused {
            scope: Scope::Source,
            ..
        }
    ));
    assert!(s.clear(Target::Source(src(2))));
    let _ = ticket(&s, alice(src(2)), T0);
    let st = s.status(Some(alice_key), None, &LIMITS, T0);
    assert_eq!(
        st.user.unwrap().familiar_sources,
        [("192.0.2.1".to_owned(), T0 + ms(LIMITS.familiar_for))]
    );
}

#[test]
fn keys_are_bounded_and_ipv6_aggregates_per_64() {
    assert_eq!(
        UserKey::of(&"x".repeat(100_000)).to_string().len(),
        32,
        "long names hash to a fixed size"
    );
    assert_eq!(UserKey::of("Alice@X"), UserKey::of("alice@x"));
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(SourceKey::of(a), SourceKey::of(b));
    assert_ne!(SourceKey::of(a), SourceKey::of(c));
    assert_eq!(SourceKey::of(a).to_string(), "2001:db8:1:2::/64");
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(SourceKey::of(mapped), src(1));
}

#[test]
fn tables_stay_bounded() {
    let s = LocalStore::default();
    for n in 0..(MAX_ENTRIES + 10) as u32 {
        let a = Attempt::Password {
            user: UserKey::of(&format!("u{n}")),
            source: SourceKey::of(IpAddr::from(n.to_be_bytes())),
        };
        attempt(&s, a, Outcome::Failed(pw(1)), T0);
    }
    let t = s.lock();
    assert!(t.counters.len() <= MAX_ENTRIES);
    assert!(t.passwords.len() <= MAX_ENTRIES);
}
