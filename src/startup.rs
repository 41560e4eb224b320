//! Start-up checks: everything `mailgate run` needs from the config before it serves, checked
//! without serving, binding for good or writing. `mailgate check` and `mailgate run` both call
//! [`check`] and print its report the same way, so a config `check` accepts is one `run` starts
//! with, and the systemd unit's `ExecStartPre=mailgate check` never passes a config that then
//! fails on every restart.
//!
//! Two stages, each collecting every problem: [`Config::load`] (syntax, keys, values, the
//! directory and secret files), then [`preflight`] on the loaded config (certificates and keys
//! read, parsed and matched, or creatable where `generate_self_signed` would write them;
//! upstream CA files; the audit file writable; every listen address assignable on this host;
//! a `RUST_LOG` override that parses). Each problem names its key path.
//!
//! Not checked: a listen port another process holds. `check` cannot tell that process from a
//! running mailgate (whose config an operator checks before a reload), so a port in use is left
//! to `run`, which names the listener and address.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigErrors, ListenerTls, UpstreamTls};

/// One start-up problem: where in the config, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, as in config errors: `tls.cert_file`, `upstream "dovecot".ca_file`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config cannot start: the problems of the first stage that had any.
#[derive(Debug)]
pub enum Report {
    Config(ConfigErrors),
    Preflight(Vec<Problem>),
}

impl Report {
    pub fn len(&self) -> usize {
        match self {
            Report::Config(errors) => errors.0.len(),
            Report::Preflight(problems) => problems.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Report {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Config(errors) => write!(f, "{errors}"),
            Report::Preflight(problems) => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Loads `path` and runs [`preflight`]: the config `run` may start with, or every problem.
pub fn check(path: &Path) -> Result<Config, Report> {
    let config = Config::load(path).map_err(Report::Config)?;
    let problems = preflight(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(Report::Preflight(problems))
    }
}

/// Every file and address problem of a loaded config, in config order.
pub fn preflight(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |path: String, message: String| out.push(Problem { path, message });
    if let Ok(filter) = std::env::var("RUST_LOG")
        && let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&filter)
    {
        push(
            "RUST_LOG".to_owned(),
            format!("invalid filter {filter:?} (it overrides log.filter): {e}"),
        );
    }
    for (i, l) in config.listeners.iter().enumerate() {
        if let Err(e) = probe_bind(l.bind) {
            push(
                format!("listener[{i}].bind"),
                format!("cannot bind {}: {e}", l.bind),
            );
        }
    }
    let needs_tls = config.listeners.iter().any(|l| l.tls != ListenerTls::None);
    if let Some(tls) = config.tls.as_ref().filter(|_| needs_tls)
        && let Err(e) = crate::tls::check_server_config(tls)
    {
        // The key path of the file the error is about.
        let key = match &e {
            crate::tls::TlsError::HalfPair { missing, .. } if *missing == tls.key_file => {
                "tls.key_file"
            }
            crate::tls::TlsError::Missing { path, .. }
            | crate::tls::TlsError::Read { path, .. }
            | crate::tls::TlsError::Write { path, .. }
            | crate::tls::TlsError::Pem { path, .. }
            | crate::tls::TlsError::NoCertificate { path }
            | crate::tls::TlsError::NoKey { path }
                if *path == tls.key_file =>
            {
                "tls.key_file"
            }
            crate::tls::TlsError::Rejected { .. } => "tls.key_file",
            _ => "tls.cert_file",
        };
        push(key.to_owned(), e.to_string());
    }
    for (name, up) in &config.upstreams {
        if up.tls == UpstreamTls::None {
            continue;
        }
        if let Err(e) = crate::tls::upstream_connector(up) {
            let key = match e {
                crate::tls::TlsError::ServerName { .. } => "server_name",
                _ => "ca_file",
            };
            push(format!("upstream \"{name}\".{key}"), e.to_string());
        }
    }
    if let Some(ldap) = &config.policy.ldap {
        // The trust anchors every sync needs (read now, not at the first sync); the server
        // itself is only contacted by `check --connect`.
        if let Some(ca) = &ldap.ca_file
            && let Err(e) = crate::tls::ca_roots(ca)
        {
            push("policy.ldap.ca_file".to_owned(), e.to_string());
        }
        // `cache_file` is written after every applied sync: its directory must exist.
        if let Some(cache) = &ldap.cache_file
            && let Some(dir) = cache.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            push(
                "policy.ldap.cache_file".to_owned(),
                format!("directory {} does not exist", dir.display()),
            );
        }
    }
    if let Err(e) = crate::auth::Verifier::new(&config.oauth) {
        push("oauth.provider".to_owned(), e.to_string());
    }
    if let Err(e) = crate::audit::Audit::check(&config.audit) {
        push("audit.file".to_owned(), e.to_string());
    }
    if let Some(admin) = &config.admin
        && let Err(e) = probe_bind(admin.bind)
    {
        push(
            "admin.bind".to_owned(),
            format!("cannot bind {}: {e}", admin.bind),
        );
    }
    out
}

/// Binds `addr` as a listener would (same socket options), without listening, and lets it go
/// at once. An address this host does not have (`EADDRNOTAVAIL`) or a privileged port without
/// `CAP_NET_BIND_SERVICE` (`EACCES`) fails here; a port in use does not (see the module doc).
fn probe_bind(addr: SocketAddr) -> std::io::Result<()> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    match socket.bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(()),
        other => other,
    }
}
