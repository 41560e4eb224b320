//! mailgate: an access-gating proxy for IMAP and POP3.
//!
//! Data flows one way:
//!
//! ```text
//! server → tls → session { proto frontend → directory/policy } → upstream (proto replay) → splice
//! ```
//!
//! - [`admin`]: admin HTTP listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`audit`]: typed audit records, the non-blocking file/stdout sink, `audit tail`.
//! - [`cli`]: clap types for the `mailgate` binary.
//! - [`server`]: listeners, accept loop, signals.
//! - [`tls`]: rustls configs for the downstream (server) and upstream (client) sides.
//! - [`session`]: the per-connection driver, the only module that wires the stages together.
//! - [`proto`]: SANS-IO machines: IMAP/POP3 pre-auth front-ends, login replay, SASL.
//! - [`directory`]: OU tree, users, groups, nesting, compliance; resolved at load.
//! - [`ldap`]: the organisation from LDAP / Active Directory (`[policy.ldap]`), synced
//!   fail-static into the directory.
//! - [`policy`]: pure decision `(directory, attempt) -> Decision`, with provenance.
//! - [`upstream`]: connect to the real mail server, TLS, drive the replay machine.
//! - [`splice`]: bidirectional copy after login, byte counts, idle timeout.
//! - [`stream`]: plaintext-or-TLS stream used on both sides.
//! - [`conn_limit`]: caps at accept: connections per client address, handshakes in progress.
//! - [`throttle`]: smart lockout of password guessing; its `store` holds the counters
//!   (in-process, or shared by a fleet).
//! - [`pacing`]: refused password logins take as long as the upstream's own refusals.
//! - [`grants`]: OAuth grants of shared mailboxes: the 0600 store, single-flight refresh
//!   (oauth2 crate), `mailgate grant authorize | status | revoke`.
//! - [`auth`]: bearer token verification (JWT/JWKS, introspection, tokeninfo), cached.
//! - [`config`]: TOML model, validation, loading.
//! - [`startup`]: the checks `check` and `run` share before serving (files, addresses).
//! - [`metrics`]: Prometheus registry with typed label sets.
//! - [`secret`]: `Secret<T>`, redacted in every `Debug`.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conn_limit;
pub mod directory;
pub mod grants;
pub mod ldap;
pub mod metrics;
pub mod pacing;
pub mod policy;
pub mod proto;
pub mod secret;
pub mod server;
pub mod session;
pub mod splice;
pub mod startup;
pub mod stream;
pub mod throttle;
pub mod tls;
mod toml_error;
mod trim;
pub mod upstream;
mod writable;
