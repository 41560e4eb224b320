//! Validation: [`file::File`] in, [`Config`] or every problem with its key path out.
//!
//! Each check pushes onto one error list and carries on, so an operator fixes a file in one pass
//! (linkerd `parse_config`). Paths use the index for listeners (`listener[1].bind`, as the file
//! has no other stable handle before the name is checked) and the name for upstreams
//! (`upstream "dovecot".connect_timeout`), which is what the operator searches for.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::duration::{self, DurationError};
use super::file::{
    self, AdminFile, AuditFile, File, LimitsFile, ListenerFile, Parsed, PolicyFile, TlsFile,
    UpstreamFile,
};
use super::{
    Admin, AuditConfig, AuditSink, Cidr, Config, ConfigError, ConfigErrors,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOGIN_TIMEOUT, Limits, Listener, ListenerTls, Log,
    PolicyConfig, ServerTls, TrustedProxies, Upstream,
};
use crate::conn_limit::Caps;
use crate::directory::Directory;
use crate::proto::PreauthLimits;
use crate::throttle::{Key, ThrottleConfig};

/// Lowest accepted `max_line`. RFC 7162 section 4 recommends servers accept command lines of at
/// least 8192 octets; before login commands are short, but below 512 even a modest `ID` or a
/// SASL-IR PLAIN response would be cut.
const MIN_MAX_LINE: u64 = 512;
/// Highest accepted `max_line` / `max_literal`: 1 MiB is far above any JWT, and keeps one
/// unauthenticated connection from pinning much memory.
const MAX_PREAUTH_BUFFER: u64 = 1024 * 1024;
/// Lowest accepted `max_literal`: RFC 4616 section 2 expects at least 255 octets for the
/// authentication identity and password.
const MIN_MAX_LITERAL: u64 = 255;
/// Bounds of `max_username`: below 64 (an RFC 5321 local part) real addresses would be
/// refused; above 64 KiB a name is no address at all and only fills logs.
const MIN_MAX_USERNAME: u64 = 64;
const MAX_MAX_USERNAME: u64 = 64 * 1024;
/// More failed logins than this per connection only helps password guessing.
const MAX_AUTH_ATTEMPTS: u64 = 100;
/// Highest accepted `max_bad_commands`: beyond it the limit would not stop a junk loop.
const MAX_BAD_COMMANDS: u64 = 1000;
/// Upper bound for `[policy] contact`: it goes into a one-line protocol answer.
const MAX_CONTACT_LEN: usize = 200;
/// Upper bound for a name: it ends up in audit records and metric labels.
const MAX_NAME_LEN: usize = 64;

pub(super) fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut parsed = file::parse(text);
    if matches!(parsed.errors.first(), Some(ConfigError::Syntax { .. })) {
        return Err(ConfigErrors(parsed.errors));
    }
    let mut v = Validator {
        errors: std::mem::take(&mut parsed.errors),
        base_dir,
    };
    let file = std::mem::take(&mut parsed.file);
    let config = v.config(file, &parsed);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

/// The `[audit]` table alone; errors elsewhere in the file are not this caller's business.
pub(super) fn audit_only(text: &str, base_dir: &Path) -> Result<AuditConfig, ConfigErrors> {
    let mut parsed = file::parse(text);
    if matches!(parsed.errors.first(), Some(ConfigError::Syntax { .. })) {
        return Err(ConfigErrors(parsed.errors));
    }
    let mut v = Validator {
        errors: parsed
            .errors
            .drain(..)
            .filter(|e| {
                e.path()
                    .is_some_and(|p| p == "audit" || p.starts_with("audit."))
            })
            .collect(),
        base_dir,
    };
    let audit = std::mem::take(&mut parsed.file)
        .audit
        .map(|a| v.audit(a))
        .unwrap_or_default();
    if v.errors.is_empty() {
        Ok(audit)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

struct Validator<'a> {
    errors: Vec<ConfigError>,
    base_dir: &'a Path,
}

impl Validator<'_> {
    fn invalid(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Builds the config from what parsed; the result is only used when no error was pushed.
    fn config(&mut self, f: File, parsed: &Parsed) -> Config {
        let upstreams = self.upstreams(f.upstream);
        let listeners = self.listeners(f.listener, &upstreams, parsed);
        let tls = f.tls.map(|t| self.server_tls(t));
        if tls.is_none()
            && !parsed.broken_tls
            && let Some((i, l)) = listeners
                .iter()
                .enumerate()
                .find(|(_, l)| l.tls != ListenerTls::None)
        {
            self.invalid(
                "tls",
                format!(
                    "missing [tls] table, required because listener[{i}] \"{}\" uses tls = \
                     \"{}\"",
                    l.name,
                    listener_tls_str(l.tls)
                ),
            );
        }
        let counter_store = self.counter_store(&f.limits);
        let limits = self.limits(f.limits);
        let filter = f
            .log
            .filter
            .unwrap_or_else(|| super::DEFAULT_LOG_FILTER.to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&filter) {
            self.invalid("log.filter", format!("invalid filter {filter:?}: {e}"));
        }
        let admin = f.admin.and_then(|a| self.admin(a, &listeners));
        let oauth = super::oauth::validate(f.oauth, self.base_dir, &mut self.errors);
        let audit = f.audit.map(|a| self.audit(a)).unwrap_or_default();
        let (policy, directory) = self.policy(f.policy);
        self.routes(&directory, &upstreams);
        let grants = f
            .grants
            .map(|g| super::grants::grants(g, self.base_dir, &mut self.errors));
        self.shared_mailboxes(
            &directory,
            &upstreams,
            &parsed.broken_upstreams,
            grants.as_ref(),
            parsed.broken_grants,
        );
        Config {
            listeners,
            upstreams,
            tls,
            limits,
            counter_store,
            log: Log { filter },
            admin,
            oauth,
            policy,
            directory,
            audit,
            grants,
        }
    }

    /// The `[[shared_mailbox]]` entries of the directory name upstreams of this file, and
    /// need `[grants]` to be served.
    fn shared_mailboxes(
        &mut self,
        directory: &Directory,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        broken: &[String],
        grants: Option<&super::grants::Grants>,
        broken_grants: bool,
    ) {
        for (i, shared) in directory.shared_mailboxes().iter().enumerate() {
            let mut seen = Vec::new();
            // An [[upstream]] with its own error is reported there, not again here.
            if shared
                .upstreams
                .iter()
                .any(|n| broken.iter().any(|b| **b == **n))
            {
                continue;
            }
            for name in &shared.upstreams {
                match upstreams.get(&**name) {
                    None => self.invalid(
                        format!("shared_mailbox[{i}].upstream"),
                        format!("no [[upstream]] named {name:?}"),
                    ),
                    Some(u) if seen.contains(&u.protocol) => self.invalid(
                        format!("shared_mailbox[{i}].upstream"),
                        format!(
                            "two upstreams for {}; name one per protocol",
                            u.protocol.as_str()
                        ),
                    ),
                    Some(u) => seen.push(u.protocol),
                }
            }
            for protocol in shared.protocols.iter().flatten() {
                if !seen.contains(protocol) {
                    self.invalid(
                        format!("shared_mailbox[{i}].protocols"),
                        format!(
                            "{} is allowed but no {} upstream is named",
                            protocol.as_str(),
                            protocol.as_str()
                        ),
                    );
                }
            }
            if grants.is_none() && !broken_grants {
                self.invalid(
                    format!("shared_mailbox[{i}].grant"),
                    "shared mailboxes need a [grants] table in the main config (dir = ...)",
                );
                break;
            }
        }
    }

    fn audit(&mut self, a: AuditFile) -> AuditConfig {
        let sink = match (a.file, a.stdout) {
            (Some(file), None | Some(false)) if !file.is_empty() => {
                AuditSink::File(self.path(&file))
            }
            (Some(file), None | Some(false)) => {
                self.invalid("audit.file", format!("{file:?} is not a file path"));
                AuditSink::Disabled
            }
            (None, Some(true)) => AuditSink::Stdout,
            (Some(_), Some(true)) => {
                self.invalid("audit", "set either `file` or `stdout = true`, not both");
                AuditSink::Disabled
            }
            (None, None | Some(false)) => {
                self.invalid(
                    "audit",
                    "set `file = \"path\"` or `stdout = true` (remove [audit] to disable \
                     auditing)",
                );
                AuditSink::Disabled
            }
        };
        let d = AuditConfig::default();
        let queue = self.bounded(
            "audit.queue",
            a.queue,
            d.queue as u64,
            1,
            super::MAX_AUDIT_QUEUE as u64,
        );
        AuditConfig {
            sink,
            queue: usize::try_from(queue).unwrap_or(d.queue),
        }
    }

    /// `[policy]` and the directory it names. Without the table: the built-in allow-all
    /// directory (`Config::warnings` says so).
    fn policy(&mut self, p: Option<PolicyFile>) -> (PolicyConfig, Arc<Directory>) {
        let Some(p) = p else {
            return (PolicyConfig::default(), Arc::new(Directory::allow_all()));
        };
        let contact = p.contact.unwrap_or_default();
        if contact.chars().count() > MAX_CONTACT_LEN || contact.chars().any(char::is_control) {
            self.invalid(
                "policy.contact",
                format!("must be one line of at most {MAX_CONTACT_LEN} characters"),
            );
        }
        let config = PolicyConfig {
            directory: None,
            default_ou: p.default_ou.clone(),
            disclose_reasons: p.disclose_reasons.unwrap_or_default(),
            contact,
            // On by default, as the consoles cut access "even if they could log in before": a
            // policy that refuses someone should not wait for their session to end.
            revoke_on_reload: p.revoke_on_reload.unwrap_or(true),
            ldap: p
                .ldap
                .clone()
                .and_then(|l| super::ldap::validate(l, self.base_dir, &mut self.errors))
                .map(Arc::new),
            directory_text: Arc::from(""),
        };
        let fallback = Arc::new(Directory::allow_all());
        if p.directory.is_empty() {
            self.invalid("policy.directory", "must not be empty");
            return (config, fallback);
        }
        let file = self.path(&p.directory);
        let config = PolicyConfig {
            directory: Some(file.clone()),
            ..config
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                self.invalid(
                    "policy.directory",
                    format!("cannot read {}: {e}", file.display()),
                );
                return (config, fallback);
            }
        };
        let config = PolicyConfig {
            directory_text: Arc::from(text.as_str()),
            ..config
        };
        // With LDAP the file may leave OU ancestors and group members to the sync; checked
        // here as it merges with an empty one.
        // (By the table, not its validated form: an error there is reported once, not again
        // as a knock-on error about the file's OU tree.)
        let parsed = if p.ldap.is_some() {
            Directory::from_toml_and_ldap(&text, &Default::default())
        } else {
            Directory::from_toml(&text)
        };
        let directory = match parsed {
            Ok(d) => d,
            Err(errors) => {
                for error in errors.0 {
                    self.errors.push(ConfigError::Directory {
                        file: p.directory.clone(),
                        error,
                    });
                }
                return (config, fallback);
            }
        };
        let directory = match &p.default_ou {
            None => directory,
            Some(ou) => match directory.with_default_ou(ou) {
                Ok(d) => d,
                Err(_) => {
                    self.invalid(
                        "policy.default_ou",
                        format!("no OU \"{ou}\" in {}", p.directory),
                    );
                    return (config, fallback);
                }
            },
        };
        (config, Arc::new(directory))
    }

    /// Every `upstream` the directory names must be an `[[upstream]]` here, and in the table
    /// form (`{ imap = "...", pop3 = "..." }`) one of that protocol.
    fn routes(&mut self, d: &Directory, upstreams: &BTreeMap<String, Arc<Upstream>>) {
        use crate::directory::Route;
        let mut named: Vec<(String, &Route)> = Vec::new();
        for ou in d.ous() {
            if let Some(r) = &ou.own.upstream {
                named.push((format!("ou \"{}\"", ou.path), r));
            }
        }
        for p in d.principals() {
            if let Some(r) = &p.upstream {
                named.push((format!("user \"{}\"", p.email), r));
            }
        }
        for g in d.groups() {
            if let Some(r) = g.policy.as_ref().and_then(|p| p.settings.upstream.as_ref()) {
                named.push((format!("group \"{}\"", g.email), r));
            }
        }
        for (who, route) in named {
            for (name, protocol) in route.names() {
                let problem = match (upstreams.get(name), protocol) {
                    (None, _) => format!("upstream \"{name}\" is not an [[upstream]] in this file"),
                    (Some(u), Some(p)) if u.protocol != p => format!(
                        "upstream \"{name}\" speaks {}, but is named for {}",
                        u.protocol.as_str(),
                        p.as_str()
                    ),
                    _ => continue,
                };
                self.invalid("policy.directory", format!("{who}: {problem}"));
            }
        }
    }

    fn upstreams(&mut self, files: Vec<UpstreamFile>) -> BTreeMap<String, Arc<Upstream>> {
        let mut out = BTreeMap::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, u) in files.into_iter().enumerate() {
            self.name(&format!("upstream[{i}].name"), &u.name);
            if let Some(first) = seen.insert(u.name.clone(), i) {
                self.invalid(
                    format!("upstream[{i}].name"),
                    format!(
                        "duplicate upstream name \"{}\" (also upstream[{first}])",
                        u.name
                    ),
                );
                continue;
            }
            let up = self.upstream(u);
            out.insert(up.name.clone(), Arc::new(up));
        }
        out
    }

    fn upstream(&mut self, u: UpstreamFile) -> Upstream {
        let at = format!("upstream \"{}\"", u.name);
        if u.addresses.is_empty() {
            self.invalid(
                format!("{at}.addresses"),
                "must list at least one \"host:port\"",
            );
        }
        let mut first_host = None;
        for (i, a) in u.addresses.iter().enumerate() {
            match host_port(a) {
                Ok((host, _)) => {
                    if first_host.is_none() {
                        first_host = Some(host.to_owned());
                    }
                }
                Err(why) => self.invalid(format!("{at}.addresses[{i}]"), format!("{a:?}: {why}")),
            }
        }
        let server_name = match u.server_name {
            Some(name) => {
                if ServerName::try_from(name.as_str()).is_err() {
                    self.invalid(
                        format!("{at}.server_name"),
                        format!("{name:?} is neither a DNS name nor an IP address"),
                    );
                }
                name
            }
            // host_port already checked the host is a valid server name.
            None => first_host.unwrap_or_default(),
        };
        let send_proxy_protocol = u.send_proxy_protocol.unwrap_or(false);
        // The upstream sees the real client by default (IMAP ID / POP3 XCLIENT); with a PROXY
        // header it already does, so the ID is not sent twice.
        let send_id = u.send_id.unwrap_or(!send_proxy_protocol);
        Upstream {
            send_proxy_protocol,
            send_id,
            protocol: u.protocol,
            addresses: u.addresses,
            tls: u.tls,
            server_name,
            ca_file: u.ca_file.map(|p| self.path(&p)),
            verify_certificate: u.verify_certificate.unwrap_or(true),
            connect_timeout: self.duration(
                &format!("{at}.connect_timeout"),
                u.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            login_timeout: self.duration(
                &format!("{at}.login_timeout"),
                u.login_timeout.as_deref(),
                DEFAULT_LOGIN_TIMEOUT,
            ),
            name: u.name,
        }
    }

    fn listeners(
        &mut self,
        files: Vec<ListenerFile>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        parsed: &Parsed,
    ) -> Vec<Listener> {
        if files.is_empty() && !parsed.broken_listener {
            self.invalid("listener", "at least one [[listener]] is required");
        }
        let mut out: Vec<Listener> = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, l) in files.iter().enumerate() {
            let at = format!("listener[{i}]");
            self.name(&format!("{at}.name"), &l.name);
            if let Some(first) = names.insert(&l.name, i) {
                self.invalid(
                    format!("{at}.name"),
                    format!(
                        "duplicate listener name \"{}\" (also listener[{first}])",
                        l.name
                    ),
                );
            }
            let bind = match l.bind.parse::<SocketAddr>() {
                Ok(bind) => bind,
                Err(_) => {
                    self.invalid(
                        format!("{at}.bind"),
                        format!(
                            "{:?} is not an IP address and port, e.g. \"127.0.0.1:993\" or \
                             \"[::1]:993\"",
                            l.bind
                        ),
                    );
                    continue;
                }
            };
            // docs/wire.md "Listeners and TLS": a plaintext listener refuses to start off loopback,
            // since passwords would cross the network in the clear.
            if l.tls == ListenerTls::None && !bind.ip().to_canonical().is_loopback() {
                self.invalid(
                    format!("{at}.bind"),
                    format!(
                        "\"{bind}\" is not a loopback address; tls = \"none\" is only allowed \
                         on loopback (127.0.0.0/8, ::1)"
                    ),
                );
            }
            if let Some(j) = out.iter().position(|o| binds_conflict(o.bind, bind)) {
                self.invalid(
                    format!("{at}.bind"),
                    format!(
                        "\"{bind}\" conflicts with listener[{j}] \"{}\" on \"{}\"",
                        out[j].name, out[j].bind
                    ),
                );
            }
            match upstreams.get(&l.upstream) {
                Some(up) if up.protocol != l.protocol => self.invalid(
                    format!("{at}.upstream"),
                    format!(
                        "upstream \"{}\" speaks {}, but this listener speaks {}",
                        l.upstream,
                        up.protocol.as_str(),
                        l.protocol.as_str()
                    ),
                ),
                Some(_) => {}
                // Already reported where that upstream is defined.
                None if parsed.broken_upstreams.contains(&l.upstream) => {}
                None => self.invalid(
                    format!("{at}.upstream"),
                    format!("no [[upstream]] named \"{}\"", l.upstream),
                ),
            }
            let proxy_protocol = self.proxy_protocol(&at, l);
            out.push(Listener {
                name: l.name.clone(),
                protocol: l.protocol,
                bind,
                tls: l.tls,
                upstream: l.upstream.clone(),
                proxy_protocol,
            });
        }
        out
    }

    /// `proxy_protocol` / `proxy_trusted` of one listener. Trusted peers must be listed
    /// explicitly: with a default, turning the header on could trust more than meant. The list
    /// is checked even while `proxy_protocol = false`, so a bad entry never waits for the day
    /// the header is switched on.
    fn proxy_protocol(&mut self, at: &str, l: &ListenerFile) -> Option<TrustedProxies> {
        let mut cidrs = Vec::new();
        for (i, text) in l.proxy_trusted.iter().flatten().enumerate() {
            match text.parse::<Cidr>() {
                Ok(c) => cidrs.push(c),
                Err(e) => {
                    self.invalid(format!("{at}.proxy_trusted[{i}]"), format!("{text:?}: {e}"))
                }
            }
        }
        let parsed_all = cidrs.len() == l.proxy_trusted.as_ref().map_or(0, Vec::len);
        match (l.proxy_protocol.unwrap_or(false), &l.proxy_trusted) {
            (true, None) => {
                self.invalid(
                    format!("{at}.proxy_trusted"),
                    "required when proxy_protocol = true: the load balancers' addresses, \
                     e.g. [\"10.0.0.5/32\"]",
                );
                None
            }
            (true, Some(list)) if list.is_empty() => {
                self.invalid(
                    format!("{at}.proxy_trusted"),
                    "must list at least one CIDR when proxy_protocol = true",
                );
                None
            }
            (true, Some(_)) if parsed_all => TrustedProxies::new(cidrs),
            (true, Some(_)) => None,
            // Kept (and checked) while the header is switched off, so it can be toggled alone.
            (false, _) => None,
        }
    }

    fn admin(&mut self, a: AdminFile, listeners: &[Listener]) -> Option<Admin> {
        let d = Admin::default();
        let max_connections = self.bounded(
            "admin.max_connections",
            a.max_connections,
            d.max_connections as u64,
            1,
            10_000,
        );
        let header_timeout = self.duration(
            "admin.header_timeout",
            a.header_timeout.as_deref(),
            d.header_timeout,
        );
        let request_timeout = self.duration(
            "admin.request_timeout",
            a.request_timeout.as_deref(),
            d.request_timeout,
        );
        let bind = match a.bind {
            None => d.bind,
            Some(text) => {
                let Ok(bind) = text.parse::<SocketAddr>() else {
                    self.invalid(
                        "admin.bind",
                        format!(
                            "{text:?} is not an IP address and port, e.g. \"127.0.0.1:9925\" \
                             or \"[::1]:9925\""
                        ),
                    );
                    return None;
                };
                if let Some((i, l)) = listeners
                    .iter()
                    .enumerate()
                    .find(|(_, l)| binds_conflict(l.bind, bind))
                {
                    self.invalid(
                        "admin.bind",
                        format!(
                            "\"{bind}\" conflicts with listener[{i}] \"{}\" on \"{}\"",
                            l.name, l.bind
                        ),
                    );
                }
                bind
            }
        };
        Some(Admin {
            bind,
            // The bound keeps it far inside usize.
            max_connections: usize::try_from(max_connections).unwrap_or(d.max_connections),
            header_timeout,
            request_timeout,
        })
    }

    fn server_tls(&mut self, t: TlsFile) -> ServerTls {
        for (key, value) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if value.is_empty() {
                self.invalid(format!("tls.{key}"), "must not be empty");
            }
        }
        if !t.cert_file.is_empty() && t.cert_file == t.key_file {
            self.invalid("tls.key_file", "must differ from tls.cert_file");
        }
        ServerTls {
            cert_file: self.path(&t.cert_file),
            key_file: self.path(&t.key_file),
            generate_self_signed: t.generate_self_signed.unwrap_or(false),
            min_version: t.min_version.unwrap_or_default(),
        }
    }

    /// `[limits] store`, `store_ca_file`, `store_timeout`: where a fleet shares its counts.
    fn counter_store(&mut self, l: &LimitsFile) -> Option<crate::throttle::store::RedisConfig> {
        use crate::throttle::store::shared;
        let timeout = self.duration(
            "limits.store_timeout",
            l.store_timeout.as_deref(),
            shared::DEFAULT_TIMEOUT,
        );
        let url = match l.store.as_deref() {
            None | Some("local") => {
                for (key, set) in [
                    ("store_ca_file", l.store_ca_file.is_some()),
                    ("store_timeout", l.store_timeout.is_some()),
                ] {
                    if set {
                        self.invalid(
                            format!("limits.{key}"),
                            "only with store = \"redis://…\" or \"rediss://…\"",
                        );
                    }
                }
                return None;
            }
            Some(url) => url.to_owned(),
        };
        let ca_file = l.store_ca_file.as_deref().map(|p| self.path(p));
        if ca_file.is_some() && !url.starts_with("rediss://") {
            self.invalid(
                "limits.store_ca_file",
                "a CA is for TLS: use a rediss:// store URL",
            );
            return None;
        }
        let config = crate::throttle::store::RedisConfig {
            url,
            ca_file,
            timeout,
        };
        // The URL may carry a password: the message shows it redacted.
        if let Err(why) = shared::client(&config) {
            self.invalid("limits.store", why);
            return None;
        }
        Some(config)
    }

    fn limits(&mut self, l: LimitsFile) -> Limits {
        let d = Limits::default();
        let p = PreauthLimits::default();
        let max_line = self.bounded(
            "limits.max_line",
            l.max_line,
            p.max_line as u64,
            MIN_MAX_LINE,
            MAX_PREAUTH_BUFFER,
        );
        let max_literal = self.bounded(
            "limits.max_literal",
            l.max_literal,
            p.max_literal as u64,
            MIN_MAX_LITERAL,
            MAX_PREAUTH_BUFFER,
        );
        let max_attempts = self.bounded(
            "limits.max_auth_attempts",
            l.max_auth_attempts,
            u64::from(p.max_attempts),
            1,
            MAX_AUTH_ATTEMPTS,
        );
        let max_bad_commands = self.bounded(
            "limits.max_bad_commands",
            l.max_bad_commands,
            u64::from(p.max_bad_commands),
            1,
            MAX_BAD_COMMANDS,
        );
        let max_username = self.bounded(
            "limits.max_username",
            l.max_username,
            p.max_username as u64,
            MIN_MAX_USERNAME,
            MAX_MAX_USERNAME,
        );
        let max_connections = self.bounded(
            "limits.max_connections",
            l.max_connections,
            d.max_connections as u64,
            1,
            // Two sockets per session; more than a million would need tuning far beyond this.
            1_000_000,
        );
        Limits {
            preauth: PreauthLimits {
                // Bounds above keep these far inside usize and u32.
                max_line: usize::try_from(max_line).unwrap_or(p.max_line),
                max_literal: usize::try_from(max_literal).unwrap_or(p.max_literal),
                max_attempts: u32::try_from(max_attempts).unwrap_or(p.max_attempts),
                max_bad_commands: u32::try_from(max_bad_commands).unwrap_or(p.max_bad_commands),
                max_username: usize::try_from(max_username).unwrap_or(p.max_username),
                auth_timeout: self.duration(
                    "limits.auth_timeout",
                    l.auth_timeout.as_deref(),
                    p.auth_timeout,
                ),
            },
            idle_timeout: self.duration(
                "limits.idle_timeout",
                l.idle_timeout.as_deref(),
                d.idle_timeout,
            ),
            send_timeout: self.duration(
                "limits.send_timeout",
                l.send_timeout.as_deref(),
                d.send_timeout,
            ),
            drain_timeout: self.duration(
                "limits.drain_timeout",
                l.drain_timeout.as_deref(),
                d.drain_timeout,
            ),
            max_connections: usize::try_from(max_connections).unwrap_or(d.max_connections),
            connections: self.conn_caps(&l),
            handshake_timeout: self.duration(
                "limits.handshake_timeout",
                l.handshake_timeout.as_deref(),
                d.handshake_timeout,
            ),
            // Linux caps the backlog at somaxconn anyway; below 16 a burst of logins after a
            // network blip is refused by the kernel.
            backlog: u32::try_from(self.bounded(
                "limits.backlog",
                l.backlog,
                u64::from(d.backlog),
                16,
                65_535,
            ))
            .unwrap_or(d.backlog),
            throttle: self.throttle(&l),
            refusal_delay_min: self.duration_or_zero(
                "limits.refusal_delay_min",
                l.refusal_delay_min.as_deref(),
                d.refusal_delay_min,
            ),
        }
    }

    /// Caps across connections (see `crate::conn_limit`); each may be 0 (off).
    fn conn_caps(&mut self, l: &LimitsFile) -> Caps {
        let d = Caps::default();
        let mut count = |path: &str, v: Option<u64>, default: usize| {
            let n = self.bounded(path, v, default as u64, 0, 1_000_000);
            // The bound keeps it far inside usize.
            usize::try_from(n).unwrap_or(default)
        };
        Caps {
            connections_per_ip: count(
                "limits.max_connections_per_ip",
                l.max_connections_per_ip,
                d.connections_per_ip,
            ),
            handshakes: count("limits.max_handshakes", l.max_handshakes, d.handshakes),
            handshakes_per_ip: count(
                "limits.max_handshakes_per_ip",
                l.max_handshakes_per_ip,
                d.handshakes_per_ip,
            ),
        }
    }

    /// Abuse limits across connections (see `crate::throttle`). Counts may be 0 (off); the
    /// delays may be "0s" (off).
    fn throttle(&mut self, l: &LimitsFile) -> ThrottleConfig {
        let d = ThrottleConfig::default();
        let count = |s: &mut Self, path: &str, v: Option<u64>, default: u64| {
            s.bounded(path, v, default, 0, 1_000_000)
        };
        let ip_failures = count(
            self,
            "limits.login_failures_per_ip",
            l.login_failures_per_ip,
            u64::from(d.failures_per_ip),
        );
        let user_failures = count(
            self,
            "limits.login_failures_per_user",
            l.login_failures_per_user,
            u64::from(d.failures_per_user),
        );
        let token_failures = count(
            self,
            "limits.token_failures_per_ip",
            l.token_failures_per_ip,
            u64::from(d.token_failures_per_ip),
        );
        let key = super::secret_ref::resolve(
            "limits.secret",
            l.secret.as_deref(),
            "limits.secret_file",
            l.secret_file.as_deref(),
            self.base_dir,
        )
        .unwrap_or_else(|(path, message)| {
            self.invalid(path, message);
            None
        })
        .map(|secret| Key::derive(secret.expose().as_bytes()));
        ThrottleConfig {
            failures_per_ip: u32::try_from(ip_failures).unwrap_or(d.failures_per_ip),
            failures_per_user: u32::try_from(user_failures).unwrap_or(d.failures_per_user),
            token_failures_per_ip: u32::try_from(token_failures).unwrap_or(d.token_failures_per_ip),
            familiar_for: self.duration(
                "limits.familiar_for",
                l.familiar_for.as_deref(),
                d.familiar_for,
            ),
            key,
            window: self.duration(
                "limits.login_failure_window",
                l.login_failure_window.as_deref(),
                d.window,
            ),
            block: self.duration("limits.login_block", l.login_block.as_deref(), d.block),
            base_delay: self.duration_or_zero(
                "limits.login_failure_delay",
                l.login_failure_delay.as_deref(),
                d.base_delay,
            ),
            max_delay: self.duration_or_zero(
                "limits.login_failure_delay_max",
                l.login_failure_delay_max.as_deref(),
                d.max_delay,
            ),
        }
    }

    fn duration_or_zero(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: std::time::Duration,
    ) -> std::time::Duration {
        match text.map(duration::parse) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.invalid(
                    path,
                    format!("invalid duration {:?}: {e}", text.unwrap_or("")),
                );
                default
            }
        }
    }

    fn bounded(&mut self, path: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.invalid(
                    path,
                    format!("{v} is out of range, expected {min} to {max}"),
                );
                default
            }
        }
    }

    fn duration(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: std::time::Duration,
    ) -> std::time::Duration {
        let Some(text) = text else {
            return default;
        };
        match duration::parse_nonzero(text) {
            Ok(d) => d,
            Err(e @ DurationError::Zero) => {
                self.invalid(path, format!("duration {text:?} {e}"));
                default
            }
            Err(e) => {
                self.invalid(path, format!("invalid duration {text:?}: {e}"));
                default
            }
        }
    }

    /// Names show up in audit records, logs and metric labels: keep them short and plain.
    fn name(&mut self, path: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            self.invalid(
                path,
                format!(
                    "{name:?} is not a valid name: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 - _ ."
                ),
            );
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base_dir.join(p)
    }
}

/// Splits `"host:port"` or `"[v6]:port"`; the host must be usable as a TLS server name (a DNS
/// name or an IP address) and the port non-zero.
pub fn host_port(addr: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or("expected \"[ipv6]:port\"")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the part in brackets is not an IPv6 address");
        }
        (host, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or("missing \":port\"")?;
        if host.contains(':') {
            return Err("IPv6 addresses need brackets, e.g. \"[::1]:143\"");
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("missing host");
    }
    if host.parse::<IpAddr>().is_err() && ServerName::try_from(host).is_err() {
        return Err("the host is neither a DNS name nor an IP address");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port must be a number from 1 to 65535"),
        Ok(port) => Ok((host, port)),
    }
}

/// Would binding `b` fail because `a` is bound? Same port and family, and the same address or
/// either one the wildcard. Port 0 asks the kernel for a free port and never conflicts.
/// `[::]` next to `0.0.0.0` depends on IPV6_V6ONLY and is left to the kernel to report.
fn binds_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn listener_tls_str(t: ListenerTls) -> &'static str {
    match t {
        ListenerTls::Implicit => "implicit",
        ListenerTls::StartTls => "starttls",
        ListenerTls::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_table() {
        let ok: &[(&str, (&str, u16))] = &[
            ("127.0.0.1:143", ("127.0.0.1", 143)),
            ("localhost:110", ("localhost", 110)),
            ("mail.example.com:993", ("mail.example.com", 993)),
            ("[::1]:143", ("::1", 143)),
        ];
        for (input, want) in ok {
            assert_eq!(host_port(input), Ok(*want), "{input}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            ":143",
            "::1:143",
            "[::1]143",
            "[nope]:143",
            "host:0",
            "host:70000",
            "host:https",
            "bad host:143",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bind_conflicts() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(binds_conflict(a("127.0.0.1:143"), a("127.0.0.1:143")));
        assert!(binds_conflict(a("0.0.0.0:143"), a("127.0.0.1:143")));
        assert!(binds_conflict(a("[::1]:143"), a("[::]:143")));
        assert!(!binds_conflict(a("127.0.0.1:143"), a("127.0.0.2:143")));
        assert!(!binds_conflict(a("127.0.0.1:143"), a("[::1]:143")));
        assert!(!binds_conflict(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
