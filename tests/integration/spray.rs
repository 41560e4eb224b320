//! Password spraying (issue 10): what a guessing campaign must not do to legitimate users.
//!
//! - The upstream sees the real client (IMAP `ID`, POP3 `XCLIENT`), so Dovecot's per-address
//!   auth penalty lands on the guesser, not on mailgate's own address and every user behind it.
//! - A refusal's timing does not tell which accounts exist: unknown, suspended and IMAP-off
//!   accounts are refused on the schedule of a wrong password (two-sample tests, real Dovecot).

use std::time::{Duration, Instant};

use crate::dovecot::{Dovecot, User};
use crate::mailgate::Mailgate;
use crate::ops_e2e::{client_from, dovecot_line};
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
        // Under the null (same distribution) each p is uniform on [0, 1]: 0.001 fails a
        // correct build once in a thousand runs per class; an unpaced refusal (a few ms
        // against 1-2 s) gives p < 1e-50.
        assert!(
            ks > 0.001 && mw > 0.001,
            "{class} refusals are distinguishable from a wrong password: {t} in {report}"
        );
    }
}
