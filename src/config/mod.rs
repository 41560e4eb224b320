//! Stage: config. `mailgate.toml` in, a validated, typed [`Config`] out.
//!
//! Three layers, data flowing one way:
//!
//! - [`file`]: serde structs that mirror the TOML (`deny_unknown_fields`, durations as strings).
//! - `load`: turns a [`file::File`] into a [`Config`], checking meaning (unique names, references,
//!   loopback-only plaintext, sane limits) and resolving relative paths against the config file's
//!   directory.
//! - this module: the validated types the rest of mailgate uses. Once a `Config` exists it is
//!   trusted; nothing downstream re-checks it.
//!
//! Every problem is collected, not just the first, and each names its key path
//! (`listener[1].bind`, `upstream "dovecot".connect_timeout`), so `mailgate check` shows them all
//! at once. Loading does not open certificate files; `crate::tls` does that and names the path
//! in its own errors.
//!
//! `[policy] directory` names the directory file; loading it (via [`crate::directory`]) is part
//! of loading the config, and its problems come back as [`ConfigError::Directory`], displayed as
//! `directory.toml: group[2].members[1]: …`.
//!
//! Must not: do network I/O, or log (the caller decides what to print; see
//! [`Config::warnings`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::conn_limit::Caps;
use crate::directory::{Compliance, Directory};
use crate::policy::DiscloseReasons;
use crate::proto::{PreauthLimits, Protocol};
pub use crate::throttle::ThrottleConfig;

pub mod cidr;
pub mod duration;
pub mod file;
pub mod grants;
pub mod ldap;
mod load;
pub mod oauth;
pub mod reload;
mod secret_ref;

pub use cidr::Cidr;
pub use load::host_port;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// In file order. At least one.
    pub listeners: Vec<Listener>,
    /// By name. Every listener's `upstream` is a key here with the same protocol.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Present whenever a listener has `tls != none`.
    pub tls: Option<ServerTls>,
    pub limits: Limits,
    /// `[limits] store`: `None` counts in-process; `Some`: shared by a fleet through Redis.
    /// Chosen at start (a reload that changes it is warned about and takes a restart).
    pub counter_store: Option<crate::throttle::store::RedisConfig>,
    pub log: Log,
    /// `None`: no admin HTTP listener (the `[admin]` table is absent).
    pub admin: Option<Admin>,
    /// `[[oauth.provider]]`; empty when OAuth logins are not configured.
    pub oauth: oauth::OAuth,
    pub audit: AuditConfig,
    /// `[policy]`; its defaults when the table is absent.
    pub policy: PolicyConfig,
    /// The loaded directory (`[policy] directory`), or [`Directory::allow_all`] when there is no
    /// `[policy]`. Shared: sessions hold the `Arc` of the config they were accepted with.
    pub directory: Arc<Directory>,
    /// `[grants]`; `None` when no shared mailbox is served.
    pub grants: Option<grants::Grants>,
}

impl Config {
    /// Reads `path` and validates it; relative paths inside resolve against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::Read {
                file: path.to_owned(),
                reason: e.to_string(),
            }])
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Self::from_toml(&text, base_dir)
    }

    /// Only the `[audit]` table of the config at `path`, validated; nothing else is checked and
    /// the directory is not read. For `mailgate audit tail`: the rejected-reload record is
    /// wanted exactly while something else in the configuration (often `directory.toml`) is
    /// invalid.
    pub fn load_audit(path: &Path) -> Result<AuditConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::Read {
                file: path.to_owned(),
                reason: e.to_string(),
            }])
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        load::audit_only(&text, base_dir)
    }

    /// Validates TOML text; relative paths inside resolve against `base_dir`. The only file read
    /// is the directory named by `[policy] directory`; certificates are left to `crate::tls`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        load::from_toml(text, base_dir)
    }

    /// The upstream a listener forwards to. Always `Some` for a listener of this config (checked
    /// at load); `None` only for a listener from elsewhere, e.g. a config before a reload.
    pub fn upstream_for(&self, listener: &Listener) -> Option<&Arc<Upstream>> {
        self.upstreams.get(&listener.upstream)
    }

    /// Settings that are allowed but deserve an operator's attention, one line each with the
    /// key path. `mailgate run` logs them as warnings and `mailgate check` prints them.
    /// Other files this config reads that hold configuration (reloads watch them too).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.policy.directory.iter().cloned().collect()
    }

    /// This config with its directory rebuilt from `directory.toml` plus an LDAP sync. `Err`
    /// lists what the merged directory breaks (each LDAP entry named by its DN).
    pub fn with_snapshot(
        &self,
        snapshot: &crate::directory::ldap::Snapshot,
    ) -> Result<Config, crate::directory::Errors> {
        let mut directory = Directory::from_toml_and_ldap(&self.policy.directory_text, snapshot)?;
        if let Some(ou) = &self.policy.default_ou {
            directory = directory
                .with_default_ou(ou)
                .map_err(|e| crate::directory::Errors(vec![e]))?;
        }
        Ok(Config {
            directory: Arc::new(directory),
            ..self.clone()
        })
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.tls == ListenerTls::None {
                out.push(format!(
                    "listener[{i}].tls: plaintext listener \"{}\" on {}; passwords cross it \
                     unencrypted (loopback only, for tests)",
                    l.name, l.bind
                ));
            }
        }
        for (name, up) in &self.upstreams {
            if up.tls != UpstreamTls::None && !up.verify_certificate {
                out.push(format!(
                    "upstream \"{name}\".verify_certificate: false; the upstream's certificate \
                     is not checked, so anyone on the path can impersonate it"
                ));
            }
            if up.tls == UpstreamTls::None && !up.addresses.iter().all(|a| is_loopback_host(a)) {
                out.push(format!(
                    "upstream \"{name}\".tls: \"none\" to a non-loopback address; replayed \
                     passwords cross the network unencrypted"
                ));
            }
            if up.tls != UpstreamTls::None && !up.verify_certificate && up.ca_file.is_some() {
                out.push(format!(
                    "upstream \"{name}\".ca_file: ignored because verify_certificate = false"
                ));
            }
            if up.tls == UpstreamTls::None && up.ca_file.is_some() {
                out.push(format!(
                    "upstream \"{name}\".ca_file: ignored because tls = \"none\""
                ));
            }
        }
        if self.policy.directory.is_none() {
            out.push(
                "policy: no [policy] table; every login the upstream accepts is allowed (built-in \
                 directory: one root OU with pop, imap and password logins on)"
                    .to_owned(),
            );
        }
        if let Some(ldap) = &self.policy.ldap
            && ldap.cache_file.is_none()
        {
            out.push(
                "policy.ldap.cache_file: not set; a start while the directory server is \
                 unreachable fails instead of serving the last sync"
                    .to_owned(),
            );
        }
        if self.policy.disclose_reasons == DiscloseReasons::Always {
            out.push(
                "policy.disclose_reasons: \"always\"; password logins refused by policy say why, \
                 which tells anyone which accounts exist and how they are configured"
                    .to_owned(),
            );
        }
        for g in self.directory.groups() {
            if g.compliance.state == Compliance::NonCompliant {
                let offenders: Vec<&str> =
                    g.compliance.offenders.iter().map(|o| &*o.email).collect();
                out.push(format!(
                    "directory: group \"{}\" is non-compliant with its membership restriction: \
                     {} (see `mailgate groups`; they gain nothing through its policy, and on a \
                     reload only members already there may break it)",
                    g.email,
                    offenders.join(", ")
                ));
            }
        }
        if let Some(tls) = &self.tls
            && tls.generate_self_signed
        {
            out.push(
                "tls.generate_self_signed: true; a missing certificate is replaced by a \
                 self-signed one (development only)"
                    .to_owned(),
            );
        }
        self.ops_warnings(&mut out);
        for p in &self.oauth.providers {
            if p.audiences.is_empty() && p.mode != oauth::ProviderMode::Tokeninfo {
                out.push(format!(
                    "oauth.provider \"{}\".audiences: empty, so a token {} issued for any other \
                     service is accepted here",
                    p.name, p.issuer
                ));
            }
        }
        if self.audit.sink == AuditSink::Disabled {
            out.push(
                "audit: no [audit] table; audit records are not written (set `file` or \
                 `stdout = true`)"
                    .to_owned(),
            );
        }
        // RFC 9051 5.4: an IMAP server's autologout timer must be at least 30 minutes.
        if self.limits.idle_timeout < Duration::from_secs(30 * 60)
            && self.listeners.iter().any(|l| l.protocol == Protocol::Imap)
        {
            out.push(format!(
                "limits.idle_timeout: {:?} is below the 30 minutes RFC 9051 section 5.4 \
                 requires of IMAP servers",
                self.limits.idle_timeout
            ));
        }
        out
    }
}

impl Config {
    /// Warnings about PROXY protocol and admin settings.
    fn ops_warnings(&self, out: &mut Vec<String>) {
        if let Some(admin) = &self.admin
            && !admin.bind.ip().to_canonical().is_loopback()
        {
            out.push(format!(
                "admin.bind: \"{}\" is not a loopback address; /metrics and /readyz are served \
                 without authentication to anyone who can reach it",
                admin.bind
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(trusted) = &l.proxy_protocol
                && let Some(all) = trusted.cidrs().iter().find(|c| c.prefix() == 0)
            {
                out.push(format!(
                    "listener[{i}].proxy_trusted: {all} trusts every peer; anyone who can \
                     connect can claim any client address"
                ));
            }
        }
        for (name, up) in &self.upstreams {
            if !up.send_proxy_protocol && !up.send_id {
                out.push(format!(
                    "upstream \"{name}\": neither send_id nor send_proxy_protocol; the upstream \
                     sees every client as mailgate's own address, so its per-address auth \
                     penalty (Dovecot: up to 15 s) lands on all users at once"
                ));
            }
            if up.send_proxy_protocol && up.send_id {
                out.push(format!(
                    "upstream \"{name}\".send_id: the PROXY header already carries the client \
                     address; sending ID as well is redundant"
                ));
            }
        }
    }
}

fn is_loopback_host(addr: &str) -> bool {
    match host_port(addr) {
        Ok((host, _)) => {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback())
        }
        Err(_) => false,
    }
}

/// A downstream-facing listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique; used in audit records and as a metrics label.
    pub name: String,
    pub protocol: Protocol,
    pub bind: SocketAddr,
    pub tls: ListenerTls,
    /// Name of the upstream; exists in [`Config::upstreams`] with the same protocol.
    pub upstream: String,
    /// `Some`: every connection must start with a PROXY v1/v2 header
    /// (`crate::proto::proxy_header`) and come from one of these peers; the header's source
    /// is the client address from then on. Anything else closes the connection.
    /// `None` (`proxy_protocol = false`, the default): no header is read.
    pub proxy_protocol: Option<TrustedProxies>,
}

/// The peers allowed to send a PROXY header on a listener (`proxy_trusted`). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// `None` when `cidrs` is empty: a listener that expects a header from nobody would refuse
    /// every connection.
    pub fn new(cidrs: Vec<Cidr>) -> Option<Self> {
        (!cidrs.is_empty()).then_some(Self(cidrs))
    }

    /// May `peer` (the TCP peer address of the connection) send a PROXY header?
    pub fn contains(&self, peer: std::net::IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(peer))
    }

    pub fn cidrs(&self) -> &[Cidr] {
        &self.0
    }
}

/// TLS on a listener. TOML: `"implicit"` | `"starttls"` | `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// TLS from the first byte (IMAPS 993, POP3S 995; RFC 8314).
    Implicit,
    /// Plaintext greeting, then STARTTLS / STLS before any login (RFC 9051 6.2.1, RFC 2595).
    StartTls,
    /// No TLS at all. Only allowed on loopback addresses.
    None,
}

/// A real mail server that logins are replayed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub protocol: Protocol,
    /// `host:port` (`[v6]:port` for IPv6 literals), at least one, tried in order.
    pub addresses: Vec<String>,
    pub tls: UpstreamTls,
    /// Name checked against the upstream's certificate and sent as SNI. Default: the host part of
    /// the first address. A valid DNS name or IP address.
    pub server_name: String,
    /// PEM file of trusted CAs, absolute. `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Default true. False accepts any certificate (still encrypted, not authenticated).
    pub verify_certificate: bool,
    /// Per address TCP connect (and TLS handshake for implicit TLS). Default 5 s.
    pub connect_timeout: Duration,
    /// Greeting, STARTTLS and the replayed login together. Default 30 s.
    pub login_timeout: Duration,
    /// Send a PROXY v2 header (`proto::proxy_header::encode_v2`) with the real client address
    /// as the first bytes of each upstream connection. For upstreams that trust mailgate's
    /// address for it (Dovecot `haproxy_trusted_networks`). Default false.
    pub send_proxy_protocol: bool,
    /// Forward the client address in the protocol: IMAP `ID ("x-originating-ip" "…"
    /// "x-originating-port" "…")` before the replayed login (RFC 2971), POP3 `XCLIENT ADDR=…
    /// PORT=…` when the greeting offers it. The upstream believes it only from trusted
    /// addresses (Dovecot `login_trusted_networks`). Default: true unless
    /// `send_proxy_protocol` (the header already carries the address).
    pub send_id: bool,
}

/// TLS towards an upstream. TOML: `"implicit"` | `"starttls"` | `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Implicit,
    StartTls,
    None,
}

/// The certificate mailgate presents downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first. Absolute.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Absolute.
    pub key_file: PathBuf,
    /// When both files are missing, create a self-signed pair there. Default false.
    pub generate_self_signed: bool,
    /// Default 1.2.
    pub min_version: TlsVersion,
}

/// Lowest TLS version offered downstream. TOML: `"1.2"` | `"1.3"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3. RFC 8314 section 4.1 asks for 1.2 or later; many mail clients in the
    /// field still lack 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// The admin HTTP listener (`crate::admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    /// Default `127.0.0.1:9925`. Off loopback it is allowed, with a warning.
    pub bind: SocketAddr,
    /// Connections served at once. Default 64: a few scrapers and probes need a handful; the
    /// cap keeps a flood from taking the proxy's file descriptors (issue 9).
    pub max_connections: usize,
    /// Longest the request head may take to arrive. Default 5 s: a scrape sends its head in
    /// one packet; a slowloris client sends it a byte at a time.
    pub header_timeout: Duration,
    /// Longest one connection may take in all, head to last byte of the answer. Default 10 s,
    /// Prometheus's default `scrape_timeout`.
    pub request_timeout: Duration,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// 9925: unassigned by IANA, near other mail-adjacent exporters, and not a mail port.
pub const DEFAULT_ADMIN_PORT: u16 = 9925;

/// Connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Enforced by the pre-auth machines.
    pub preauth: PreauthLimits,
    /// After login, no byte either way for this long closes the session. Default 30 min, the
    /// RFC 9051 section 5.4 autologout minimum.
    pub idle_timeout: Duration,
    /// After login, a peer that accepts no byte of a pending write for this long ends the
    /// session: a client that stops reading in the middle of a large FETCH (or an upstream that
    /// stops reading an APPEND) must not pin its kernel send buffer and both sockets until the
    /// idle timeout. Default 60 s, as nginx's `send_timeout`.
    pub send_timeout: Duration,
    /// On SIGTERM, how long logged-in sessions may go on before they are ended with a goodbye.
    /// Default 30 s: long enough for a fetch in flight, short enough for a service manager's
    /// stop timeout (systemd's default is 90 s).
    pub drain_timeout: Duration,
    /// Concurrent downstream connections over all listeners. Default 10000. Read once at
    /// startup (it sizes the server's session tracker).
    pub max_connections: usize,
    /// Per-address connection cap and handshake caps (`crate::conn_limit`), taken at accept.
    pub connections: Caps,
    /// Longest a PROXY header plus TLS handshake (implicit or after STARTTLS) may take.
    /// Default 10 s: a handshake is a few round trips, and a client that cannot finish in 10 s
    /// is not going to (nginx allows 60 s, but it has no per-address cap on them).
    pub handshake_timeout: Duration,
    /// Listen backlog of every listener socket. Default 4096, as Dovecot; the kernel clamps it
    /// to `net.core.somaxconn`. Applies at bind (a restart).
    pub backlog: u32,
    /// Failed-login throttling (`crate::throttle`).
    pub throttle: ThrottleConfig,
    /// The least time a refused password login takes, whoever refused it (`crate::pacing`).
    /// Default 2 s, as Dovecot's `auth_failure_delay`: before mailgate has seen the upstream
    /// refuse anything, its own refusals take what the upstream's most likely would.
    pub refusal_delay_min: Duration,
}

/// Default of [`Limits::refusal_delay_min`].
pub const DEFAULT_REFUSAL_DELAY_MIN: Duration = Duration::from_secs(2);

impl Default for Limits {
    fn default() -> Self {
        Self {
            preauth: PreauthLimits::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            drain_timeout: Duration::from_secs(30),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connections: Caps::default(),
            handshake_timeout: Duration::from_secs(10),
            backlog: DEFAULT_BACKLOG,
            throttle: ThrottleConfig::default(),
            refusal_delay_min: DEFAULT_REFUSAL_DELAY_MIN,
        }
    }
}

/// Operator diagnostics (tracing), not the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A `tracing_subscriber::EnvFilter` directive, checked at load. Default `"info"`.
    pub filter: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            filter: DEFAULT_LOG_FILTER.to_owned(),
        }
    }
}

/// Where audit records go. TOML: the `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub sink: AuditSink,
    /// Records waiting for the writer before new ones are dropped (and counted). Default
    /// [`DEFAULT_AUDIT_QUEUE`].
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSink::Disabled,
            queue: DEFAULT_AUDIT_QUEUE,
        }
    }
}

/// The audit destination: exactly one of `file = "..."` or `stdout = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// No `[audit]` table: nothing is recorded, and [`Config::warnings`] says so.
    Disabled,
    Stdout,
    /// Absolute (a relative `file` resolves against the config file's directory).
    File(PathBuf),
}

/// 65536 records: a few seconds of a very busy proxy's logins and session ends; at roughly 300
/// bytes a record, about 20 MB when full.
pub const DEFAULT_AUDIT_QUEUE: usize = 65_536;
/// Largest accepted `audit.queue`: a longer queue only hides a stuck disk for longer.
pub const MAX_AUDIT_QUEUE: usize = 16 * 1024 * 1024;

/// `[policy]`: where the directory lives and how policy refusals are worded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Absolute path of `directory.toml`. `None`: no `[policy]`, the built-in directory.
    pub directory: Option<PathBuf>,
    /// Unknown users are placed in this OU instead of refused (`unknown_user`). Exists in the
    /// directory (checked at load).
    pub default_ou: Option<String>,
    /// Default `never`: specific reasons only after a valid token (no account enumeration).
    pub disclose_reasons: DiscloseReasons,
    /// Whom a refused person should ask, e.g. `it-help@example.com`. One line, at most
    /// 200 characters. Empty (the default): refusals say "your administrator".
    pub contact: String,
    /// On a reload, close live sessions whose user the new policy refuses. Default true, as the
    /// consoles cut access at once; a report-only refusal (`enforce = false`) closes nothing.
    pub revoke_on_reload: bool,
    /// `[policy.ldap]`: the organisation comes from LDAP; `directory` holds the policy.
    pub ldap: Option<Arc<ldap::LdapConfig>>,
    /// The text of `directory.toml` as loaded, so an LDAP sync rebuilds the directory from the
    /// same policy the rest of this config was validated with.
    pub directory_text: Arc<str>,
}

/// 5 s: a local Dovecot answers in milliseconds; longer only delays failover to the next address.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// 30 s: greeting, STARTTLS and a password check (Dovecot may delay failures by seconds).
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 9051 section 5.4: "at least 30 minutes".
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// 60 s, as nginx's `send_timeout`: a live client on a bad mobile link stalls for seconds, not a
/// minute; a client that accepts nothing for a minute has stopped reading.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// 10000: well under a default `ulimit -n` raised for a server, two sockets per session.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Dovecot's `service { client_limit }` sockets listen with 4096; Linux's `somaxconn` default
/// is 4096 since 5.4, 128 before.
pub const DEFAULT_BACKLOG: u32 = 4096;
pub const DEFAULT_LOG_FILTER: &str = "info";

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {reason}", file.display())]
    Read { file: PathBuf, reason: String },
    /// Not TOML. Nothing else is checked.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// TOML, but not the expected shape: unknown key, missing key, wrong type.
    #[error("{path}: {message}")]
    Schema { path: String, message: String },
    /// The right shape, but a value is wrong or contradicts another.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A problem in the directory file; `file` is the path as `[policy] directory` gives it.
    #[error("{file}: {error}")]
    Directory {
        file: String,
        error: crate::directory::Error,
    },
}

impl ConfigError {
    /// The key path (`listener[1].bind`), when the error has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Schema { path, .. } | ConfigError::Invalid { path, .. } => Some(path),
            ConfigError::Directory { error, .. } => error.path(),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

/// Every problem found, in the order found. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests;
