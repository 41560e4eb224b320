//! mailgate's integration tests: one binary, one module per area (docs/development.md section 7).
//!
//! - [`dovecot`]: a private Dovecot per test, the real upstream.
//! - [`pki`]: a test CA and leaf certificates made at test time.
//! - [`fixtures`]: the messages each harness mailbox starts with.
//! - [`redis`]: a private `redis-server` per test (the fleet's shared counter store).
//! - [`slapd`]: a private OpenLDAP `slapd` per test (the organisation's directory server).
//! - `ldap`: `[policy.ldap]` against it: presets, TLS, paging, fail-static syncs, the safety
//!   valve, the cache file, a login decision that follows an LDAP move.
//! - [`util`]: free ports, external clients with timeouts, digests, raw line clients.
//! - `demo`: `scripts/demo --check`, the README's first command, allows, refuses and audits.
//! - `direct`: the clients against the harness Dovecot with no proxy, proving the harness.
//! - [`mailgate`]: mailgate in-process on free ports in front of a harness Dovecot.
//! - [`idp`]: a real OAuth server (oidc-provider, `tests/idp/`) per test.
//! - `oauth`: token verification against the real IdP; Dovecot's oauth2 passdb directly.
//! - `proxy`: every login exchange, refusal and the splice, through mailgate.
//! - [`fake`]: small scripted upstreams and IdPs for faults a real server will not produce.
//! - `faults`: upstream and IdP faults through mailgate; no fd or task leaked.
//! - `accept`: half-open floods, the global and per-address caps, PROXY, the listen backlog,
//!   the admin listener under a flood.
//! - `capabilities`: the upstream's capabilities before and after login, through mailgate
//!   (imaplib against Dovecot, a Courier-like fake).
//! - `names`: over-long user names stop at mailgate's front-end.
//! - `ops_e2e`: audit records, session ends, rotation, HAProxy PROXY v2, the client address
//!   in Dovecot's log, `/metrics` and `/readyz`: the operator surface end to end.
//! - `packaging`: the Debian package (`cargo deb`, `dpkg -i`, check, `systemd-analyze verify`,
//!   purge) and the Prometheus rules and Grafana dashboard (`promtool`, a real scrape).
//! - `rollout_e2e`: issue 13 on the wire: report-only policies (`would_deny`) and routing OUs
//!   to their own Dovecot.
//! - `spray`: password spraying (issue 10): the client address upstream against Dovecot's
//!   auth penalty, refusals that take as long as upstream failures, a fleet sharing one Redis.
//!
//! Needs `dovecot`, `slapd` and `ldap-utils`, `python3`, `curl`, `node` with `tests/idp/node_modules`, `promtool` and
//! `cargo-deb`, and root for `dpkg -i` (`scripts/install-test-deps` installs them).

// This whole crate is test code: a failed `expect` is how a helper fails its test, with the
// message saying what was expected. (clippy's allow-*-in-tests covers only `#[test]` fns.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dovecot;
mod fake;
mod fixtures;
mod idp;
mod pki;
mod redis;
mod slapd;
mod util;

mod abuse;
mod accept;
mod audit_e2e;
mod capabilities;
mod demo;
mod direct;
mod faults;
mod ldap;
mod lifecycle;
mod lockout;
mod mailgate;
mod names;
mod oauth;
mod oauth_e2e;
mod ops_e2e;
mod packaging;
mod policy_e2e;
mod proxy;
mod reload;
mod rollout_e2e;
mod secrets;
mod shared_e2e;
mod spray;
mod stalls;
