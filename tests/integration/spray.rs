//! Password spraying (issue 10): what a guessing campaign must not do to legitimate users.
//!
//! - The upstream sees the real client (IMAP `ID`, POP3 `XCLIENT`), so Dovecot's per-address
//!   auth penalty lands on the guesser, not on mailgate's own address and every user behind it.
//! - A refusal's timing does not tell which accounts exist: unknown, suspended and IMAP-off
//!   accounts are refused on the schedule of a wrong password (two-sample tests, real Dovecot).

use std::time::{Duration, Instant};

use crate::dovecot::{Dovecot, User};
use crate::mailgate::Mailgate;
use crate::ops_e2e::{HaProxy, client_from, dovecot_line};
use crate::util::{json_output, run_client};

/// Dovecot's per-IP auth penalty (2 s after a failure, doubling to 15 s), which the harness
/// switches off: Dovecot creates the anvil socket it needs when the mode is not 0.
const AUTH_PENALTY_ON: &str =
    "service anvil {\n  unix_listener anvil-auth-penalty {\n    mode = 0600\n  }\n}\n";

/// mailgate's own limits out of the way: these tests are about the upstream's.
const NO_MAILGATE_LIMITS: &str = "login_failures_per_ip = 0\nlogin_failures_per_user = 0";

/// 20 wrong passwords from 127.0.0.2 at once (unknown users, so no user lockout anywhere),
/// through mailgate's plain IMAP listener.
async fn spray_from_127_0_0_2(mailgate: &Mailgate) {
    let addr = mailgate.addr("imap-plain");
    let guesses = (0..20).map(|i| async move {
        let (mut c, _) = client_from([127, 0, 0, 2], addr).await;
        c.read_line().await;
        let reply = c
            .imap("a", &format!("LOGIN sprayed{i}@example.com guess{i}"))
            .await
            .tagged;
        assert!(reply.starts_with("a NO"), "{reply}");
    });
    futures_join_all(guesses).await;
}

/// A correct login from 127.0.0.1 right after: how long it took.
async fn timed_login_from_127_0_0_1(mailgate: &Mailgate) -> Duration {
    let (mut c, _) = client_from([127, 0, 0, 1], mailgate.addr("imap-plain")).await;
    c.read_line().await;
    let started = Instant::now();
    let reply = c.imap("b", "LOGIN bob@example.com bob-secret").await.tagged;
    let took = started.elapsed();
    assert!(reply.starts_with("b OK"), "{reply}");
    eprintln!("correct login from 127.0.0.1 after the spray took {took:?}");
    took
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    tasks: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = tasks.map(tokio::spawn).collect();
    for h in handles {
        h.await.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_one_address_do_not_slow_a_user_on_another() {
    let dovecot = Dovecot::builder().extra_config(AUTH_PENALTY_ON).start();
    // The defaults: nothing about the client address is configured.
    let mailgate = Mailgate::builder(&dovecot)
        .limits(NO_MAILGATE_LIMITS)
        .start()
        .await;
    spray_from_127_0_0_2(&mailgate).await;
    let took = timed_login_from_127_0_0_1(&mailgate).await;
    // Dovecot charged the guesses to the guesser and the login to its own client.
    dovecot_line(&dovecot, &["auth failed", "rip=127.0.0.2"]).await;
    let line = dovecot_line(&dovecot, &["Login: user=<bob@example.com>"]).await;
    assert!(line.contains("rip=127.0.0.1"), "{line}");
    assert!(
        took < Duration::from_millis(1000),
        "a correct login from another address took {took:?} (Dovecot's penalty is >= 2 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_client_address_the_penalty_lands_on_everyone() {
    // The contrast that keeps the test above honest: with send_id off (the old default),
    // Dovecot sees mailgate's address for every login and delays the innocent one.
    let dovecot = Dovecot::builder().extra_config(AUTH_PENALTY_ON).start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits(NO_MAILGATE_LIMITS)
        .upstream_options("send_id = false")
        // Dovecot holds the innocent login for its penalty (seconds): longer than the default.
        .login_timeout("30s")
        .start()
        .await;
    spray_from_127_0_0_2(&mailgate).await;
    let took = timed_login_from_127_0_0_1(&mailgate).await;
    assert!(
        took >= Duration::from_millis(1900),
        "the penalty did not apply ({took:?}): the harness no longer reproduces issue 10"
    );
}

#[tokio::test]
async fn pop3_names_the_client_by_xclient() {
    // POP3 has no ID; Dovecot's pop3-login takes XCLIENT from login_trusted_networks.
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let (mut c, _) = client_from([127, 0, 0, 2], mailgate.addr("pop3-plain")).await;
    assert!(c.read_line().await.starts_with("+OK"));
    assert!(c.command("USER alice@example.com").await.starts_with("+OK"));
    let reply = c.command("PASS alice-secret").await;
    assert!(reply.starts_with("+OK"), "{reply}");
    assert!(c.command("QUIT").await.starts_with("+OK"));
    let line = dovecot_line(&dovecot, &["pop3-login", "Login: user=<alice@example.com>"]).await;
    assert!(line.contains("rip=127.0.0.2"), "{line}");
}

/// alice may log in; erin is suspended; carol's OU has IMAP off; anyone else is unknown.
const TIMING_DIRECTORY: &str = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
imap = true
pop = true
imap_clients = "all"
password_logins = true
[[ou]]
path = "/NoImap"
imap = false
[[user]]
email = "alice@example.com"
ou = "/"
[[user]]
email = "carol@example.com"
ou = "/NoImap"
[[user]]
email = "erin@example.com"
ou = "/"
suspended = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_take_as_long_as_a_wrong_password() {
    // Dovecot 2.3 takes auth_failure_delay in whole seconds: 1 s is its smallest non-zero
    // delay (2 s by default). Its failure timer runs every 0.5 s, so a wrong password takes
    // 1 to 2 s: a real spread for the draw to match.
    let dovecot = Dovecot::builder()
        .users(
            ["alice", "carol", "erin"]
                .iter()
                .map(|u| User::new(&format!("{u}@example.com"), &format!("{u}-secret")))
                .collect(),
        )
        .extra_config("auth_failure_delay = 1s")
        .start();
    let mailgate = Mailgate::builder(&dovecot)
        .policy(TIMING_DIRECTORY, "")
        .limits(NO_MAILGATE_LIMITS)
        .start()
        .await;
    let port = mailgate.addr("imap-plain").port().to_string();
    let mut cmd = tokio::process::Command::new(crate::util::python());
    cmd.arg("-u")
        .arg(crate::util::client_script("refusal_timing.py"))
        .args(["--port", &port, "--samples", "200", "--warmup", "24"])
        .args(["--concurrency", "32"])
        .args([
            "wrong=alice@example.com:not-her-password",
            "unknown=nobody@example.com:whatever",
            "suspended=erin@example.com:erin-secret",
            "imap_off=carol@example.com:carol-secret",
        ]);
    let out = run_client(cmd, Duration::from_secs(180)).await;
    let report = json_output(&out);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "not every sample was refused: {report}"
    );
    for class in ["unknown", "suspended", "imap_off"] {
        let t = &report["tests"][class];
        let (ks, mw) = (t["ks_p"].as_f64().unwrap(), t["mw_p"].as_f64().unwrap());
        // Under the null (same distribution) each p is uniform on [0, 1], so 1e-4 fails a
        // correct build once in 10,000 runs per class (a loaded machine drifts a little more);
        // an unpaced refusal (a few ms against 1-2 s) gives p < 1e-50.
        assert!(
            ks > 1e-4 && mw > 1e-4,
            "{class} refusals are distinguishable from a wrong password: {t} in {report}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A fleet shares one memory: three mailgate instances behind a real HAProxy, one Redis.
// ---------------------------------------------------------------------------------------------

/// A real HAProxy (`tests/haproxy/fleet.cfg.in`) spreading connections round-robin over
/// `backends` with PROXY v2 headers. Killed when dropped.
pub(crate) async fn fleet_proxy(backends: &[std::net::SocketAddr]) -> HaProxy {
    let servers: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server mg{i} {b} send-proxy-v2"))
        .collect();
    HaProxy::from_template(
        "fleet.cfg.in",
        crate::util::free_port(),
        &[("@SERVERS@", servers.join("\n"))],
    )
    .await
}

/// The per-user limit of the fleet tests.
const FLEET_USER_LIMIT: usize = 5;

/// A mailgate instance of the fleet: a PROXY-protocol IMAP listener for HAProxy, the counts
/// in `redis`.
async fn fleet_instance(dovecot: &Dovecot, redis: &crate::redis::Redis) -> Mailgate {
    Mailgate::builder(dovecot)
        .listener(
            "imap-proxied",
            "imap",
            "none",
            "proxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]",
        )
        .limits(&format!(
            "login_failures_per_user = {FLEET_USER_LIMIT}\nlogin_failures_per_ip = 0\n\
             store = \"{}\"\nstore_timeout = \"200ms\"",
            redis.url()
        ))
        .start()
        .await
}

/// Waits (bounded) until every instance says its counter store is `up` (or down).
async fn await_store(fleet: &[Mailgate], up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fleet
        .iter()
        .all(|m| m.services.metrics.throttle_store_is_up() == up)
    {
        assert!(
            Instant::now() < deadline,
            "counter store never went up={up}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One wrong password for `user` through the balancer, from 127.0.0.2 on a fresh connection:
/// true when it reached the upstream (`AUTHENTICATIONFAILED`), false when mailgate refused it
/// as rate limited (`UNAVAILABLE`).
async fn guess(front: std::net::SocketAddr, user: &str, n: usize) -> bool {
    let (mut c, _) = client_from([127, 0, 0, 2], front).await;
    let greeting = c.read_line().await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let reply = c
        .imap("a", &format!("LOGIN {user} wrong-guess-{n}"))
        .await
        .tagged;
    if reply.contains("[AUTHENTICATIONFAILED]") {
        true
    } else {
        assert!(reply.contains("[UNAVAILABLE]"), "{reply}");
        false
    }
}

/// Guesses until the first refusal (at most `bound` guesses): how many reached the upstream.
async fn guesses_until_blocked(front: std::net::SocketAddr, user: &str, bound: usize) -> usize {
    for n in 0..bound {
        if !guess(front, user, n).await {
            return n;
        }
    }
    panic!("{user}: {bound} guesses and never blocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_blocks_a_spread_brute_force_at_one_limit_and_survives_redis_going_away() {
    let dovecot = Dovecot::start();
    let mut redis = crate::redis::Redis::start();
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(fleet_instance(&dovecot, &redis).await);
    }
    await_store(&fleet, true).await;
    let backends: Vec<_> = fleet.iter().map(|m| m.addr("imap-proxied")).collect();
    let haproxy = fleet_proxy(&backends).await;
    let front = haproxy.front();

    // Shared: the guesses go round-robin over three instances, and the user is blocked after
    // the same count as on one (unshared, it would take 3 × 5).
    assert_eq!(
        guesses_until_blocked(front, "alice@example.com", 20).await,
        FLEET_USER_LIMIT
    );
    // Blocked on every instance.
    for n in 0..3 {
        assert!(!guess(front, "alice@example.com", 100 + n).await);
    }
    assert!(redis.dbsize() > 0, "nothing in Redis");

    // Redis goes away mid-run: every instance keeps serving and limiting on its own counts.
    redis.stop();
    let started = Instant::now();
    let mut reached = 0;
    let mut last = Vec::new();
    for n in 0..30 {
        let through = guess(front, "bob@example.com", n).await;
        reached += usize::from(through);
        last.push(through);
    }
    await_store(&fleet, false).await;
    // Each instance allows its own 5: at most 3 × 5 in all, never unlimited, and no login
    // waited on the missing Redis (30 guesses with a bounded store call each).
    assert!(
        (FLEET_USER_LIMIT..=3 * FLEET_USER_LIMIT).contains(&reached),
        "{reached} guesses reached the upstream with Redis down"
    );
    assert!(
        last[24..].iter().all(|t| !t),
        "not blocked at the end: {last:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The fleet's block on alice was mirrored locally: it holds without Redis.
    for n in 0..3 {
        assert!(!guess(front, "alice@example.com", 200 + n).await);
    }
    let logs = crate::mailgate::captured_logs();
    assert!(logs.contains("counter store down"), "no log line");

    // Back (empty): the instances reconnect, push their counts, and share again.
    redis.restart();
    await_store(&fleet, true).await;
    // What they counted alone is now the fleet's: bob stays blocked everywhere.
    for n in 0..3 {
        assert!(!guess(front, "bob@example.com", 300 + n).await);
    }
    // And a new spread brute force is blocked at one limit again.
    assert_eq!(
        guesses_until_blocked(front, "carol@example.com", 20).await,
        FLEET_USER_LIMIT
    );
    assert!(crate::mailgate::captured_logs().contains("counter store up"));
}
