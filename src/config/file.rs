//! Stage: config, file layer. TOML text in, serde structs that mirror it out.
//!
//! Every struct denies unknown fields (hickory-dns), so a typo is an error instead of a silently
//! ignored setting. Durations stay strings here; `config/mod.rs` parses them and reports the key
//! path of any bad one. Nothing here checks meaning (uniqueness, references, loopback): that is
//! the validated layer's job.
//!
//! [`parse`] does not stop at the first schema problem: it parses the document into a
//! [`toml::Table`] first and then deserializes each table on its own, so one run reports an
//! unknown key in `[limits]` *and* a wrong type in `listener[2]`. Items that fail are left out of
//! the returned [`File`] and named in [`Parsed::broken_upstreams`] so that the validated layer
//! does not report knock-on errors about them.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ConfigError, ListenerTls, TlsVersion, UpstreamTls};
use crate::policy::DiscloseReasons;
use crate::proto::Protocol;

/// The whole `mailgate.toml`, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub listener: Vec<ListenerFile>,
    #[serde(default)]
    pub upstream: Vec<UpstreamFile>,
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub log: LogFile,
    pub policy: Option<PolicyFile>,
    #[serde(default)]
    pub oauth: super::oauth::OAuthFile,
    /// `[admin]`; absent: no admin HTTP listener.
    pub admin: Option<AdminFile>,
    /// `[grants]`: where the OAuth grants of shared mailboxes are kept.
    pub grants: Option<super::grants::GrantsFile>,
    pub audit: Option<AuditFile>,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: String,
    pub protocol: Protocol,
    pub bind: String,
    pub tls: ListenerTls,
    pub upstream: String,
    pub proxy_protocol: Option<bool>,
    pub proxy_trusted: Option<Vec<String>>,
}

/// One `[[upstream]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: String,
    pub protocol: Protocol,
    pub addresses: Vec<String>,
    pub tls: UpstreamTls,
    pub server_name: Option<String>,
    pub ca_file: Option<String>,
    pub verify_certificate: Option<bool>,
    pub connect_timeout: Option<String>,
    pub login_timeout: Option<String>,
    pub send_proxy_protocol: Option<bool>,
    pub send_id: Option<bool>,
}

/// `[tls]`: the downstream-facing certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_file: String,
    pub key_file: String,
    pub generate_self_signed: Option<bool>,
    pub min_version: Option<TlsVersion>,
}

/// `[limits]`. Every key is optional; defaults live in `config/mod.rs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_line: Option<u64>,
    pub max_literal: Option<u64>,
    pub max_auth_attempts: Option<u64>,
    pub max_bad_commands: Option<u64>,
    pub max_username: Option<u64>,
    pub auth_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub max_handshakes: Option<u64>,
    pub max_handshakes_per_ip: Option<u64>,
    pub handshake_timeout: Option<String>,
    pub backlog: Option<u64>,
    pub login_failures_per_ip: Option<u64>,
    pub login_failures_per_user: Option<u64>,
    pub login_failure_window: Option<String>,
    pub login_block: Option<String>,
    pub login_failure_delay: Option<String>,
    pub login_failure_delay_max: Option<String>,
    pub refusal_delay_min: Option<String>,
    /// `"local"` (default) or a `redis://` / `rediss://` URL.
    pub store: Option<String>,
    pub store_ca_file: Option<String>,
    pub store_timeout: Option<String>,
    pub token_failures_per_ip: Option<u64>,
    pub familiar_for: Option<String>,
    /// `"env:NAME"`: the key for hashing attempted passwords, shared by a fleet.
    pub secret: Option<String>,
    pub secret_file: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub filter: Option<String>,
}

/// `[admin]`: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub bind: Option<String>,
    pub max_connections: Option<u64>,
    pub header_timeout: Option<String>,
    pub request_timeout: Option<String>,
}

/// `[audit]`: exactly one of `file` or `stdout = true`; checked in `load`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    pub file: Option<String>,
    pub stdout: Option<bool>,
    pub queue: Option<u64>,
}

/// `[policy]`: where the directory lives and how refusals are worded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Path of `directory.toml`, relative to this file.
    pub directory: String,
    pub default_ou: Option<String>,
    pub disclose_reasons: Option<DiscloseReasons>,
    pub contact: Option<String>,
    pub revoke_on_reload: Option<bool>,
    /// `[policy.ldap]`: users, OUs and groups from LDAP / Active Directory.
    pub ldap: Option<super::ldap::LdapFile>,
}

/// The outcome of [`parse`]: what could be read, and every schema problem found.
#[derive(Debug, Default)]
pub struct Parsed {
    pub file: File,
    pub errors: Vec<ConfigError>,
    /// Names of `[[upstream]]` tables that failed to deserialize, when their `name` was readable.
    /// Listeners pointing at them are not reported again as "unknown upstream".
    pub broken_upstreams: Vec<String>,
    /// At least one `[[listener]]` failed to deserialize, so "no listener" would be a knock-on
    /// error.
    pub broken_listener: bool,
    /// `[tls]` was present but failed to deserialize, so "missing [tls]" would be a knock-on
    /// error.
    pub broken_tls: bool,
    /// `[grants]` was present but had an error (reported once, not again by its users).
    pub broken_grants: bool,
}

/// Parses `text` into [`File`], collecting every schema error with its key path.
///
/// A TOML syntax error stops everything (there is no table to walk) and is reported with its
/// line and column.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let root: toml::Table = match toml::from_str(text) {
        Ok(root) => root,
        Err(e) => {
            out.errors.push(syntax_error(text, &e));
            return out;
        }
    };

    for (key, value) in root {
        match key.as_str() {
            "listener" => {
                for (i, item) in array_of_tables(&key, value, &mut out.errors)
                    .into_iter()
                    .enumerate()
                {
                    match section::<ListenerFile>(&format!("listener[{i}]"), item) {
                        Ok(l) => out.file.listener.push(l),
                        Err(e) => {
                            out.errors.push(e);
                            out.broken_listener = true;
                        }
                    }
                }
            }
            "upstream" => {
                for (i, item) in array_of_tables(&key, value, &mut out.errors)
                    .into_iter()
                    .enumerate()
                {
                    let name = item
                        .get("name")
                        .and_then(toml::Value::as_str)
                        .map(str::to_owned);
                    match section::<UpstreamFile>(&format!("upstream[{i}]"), item) {
                        Ok(u) => out.file.upstream.push(u),
                        Err(e) => {
                            out.errors.push(e);
                            out.broken_upstreams.extend(name);
                        }
                    }
                }
            }
            "tls" => match section::<TlsFile>("tls", value) {
                Ok(t) => out.file.tls = Some(t),
                Err(e) => {
                    out.errors.push(e);
                    out.broken_tls = true;
                }
            },
            "limits" => match section::<LimitsFile>("limits", value) {
                Ok(l) => out.file.limits = l,
                Err(e) => out.errors.push(e),
            },
            "log" => match section::<LogFile>("log", value) {
                Ok(l) => out.file.log = l,
                Err(e) => out.errors.push(e),
            },
            "oauth" => match section::<super::oauth::OAuthFile>("oauth", value) {
                Ok(o) => out.file.oauth = o,
                Err(e) => out.errors.push(e),
            },
            "admin" => match section::<AdminFile>("admin", value) {
                Ok(a) => out.file.admin = Some(a),
                Err(e) => out.errors.push(e),
            },
            "audit" => match section::<AuditFile>("audit", value) {
                Ok(a) => out.file.audit = Some(a),
                Err(e) => out.errors.push(e),
            },
            "policy" => match section::<PolicyFile>("policy", value) {
                Ok(p) => out.file.policy = Some(p),
                Err(e) => out.errors.push(e),
            },
            "grants" => match section::<super::grants::GrantsFile>("grants", value) {
                Ok(g) => out.file.grants = Some(g),
                Err(e) => {
                    out.errors.push(e);
                    out.broken_grants = true;
                }
            },
            _ => out.errors.push(ConfigError::Schema {
                path: key.clone(),
                message: format!(
                    "unknown key `{key}`, expected one of `listener`, `upstream`, `tls`, \
                     `limits`, `log`, `oauth`, `admin`, `audit`, `policy`, `grants`"
                ),
            }),
        }
    }
    out
}

/// `[[name]]` must be an array of tables; anything else is reported and yields nothing.
fn array_of_tables(
    key: &str,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Vec<toml::Value> {
    match value {
        toml::Value::Array(items) => items,
        other => {
            errors.push(ConfigError::Schema {
                path: key.to_owned(),
                message: format!(
                    "expected an array of tables (`[[{key}]]`), found {}",
                    other.type_str()
                ),
            });
            Vec::new()
        }
    }
}

/// Deserializes one table, prefixing any error with `path` and the key toml names inside it.
fn section<T: DeserializeOwned>(path: &str, value: toml::Value) -> Result<T, ConfigError> {
    value.try_into::<T>().map_err(|e| {
        let (inner, message) = crate::toml_error::split(&e);
        let path = match inner {
            Some(inner) => format!("{path}.{inner}"),
            None => path.to_owned(),
        };
        ConfigError::Schema { path, message }
    })
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column, message) = crate::toml_error::syntax(text, e);
    ConfigError::Syntax {
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &Parsed) -> Vec<String> {
        p.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn toml_error_key_path_is_recovered() {
        let value: toml::Value = toml::from_str("a = 1\nb = 'x'").unwrap();
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct T {
            a: String,
        }
        let e = value.try_into::<T>().unwrap_err();
        let (inner, message) = crate::toml_error::split(&e);
        assert_eq!(inner.as_deref(), Some("a"));
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn errors_in_several_tables_are_all_reported() {
        let p = parse(
            r#"
            bogus = 1
            [[listener]]
            name = "a"
            protocol = "smtp"
            bind = "127.0.0.1:1"
            tls = "none"
            upstream = "u"
            [[upstream]]
            name = "u"
            protocol = "imap"
            addresses = ["127.0.0.1:143"]
            tls = "none"
            colour = "blue"
            [limits]
            max_line = "big"
            [log]
            filter = 3
            "#,
        );
        let all = paths(&p).join("\n");
        assert_eq!(p.errors.len(), 5, "{all}");
        assert!(all.contains("bogus: unknown key `bogus`"), "{all}");
        assert!(
            all.contains("listener[0].protocol: unknown variant `smtp`"),
            "{all}"
        );
        assert!(all.contains("upstream[0]: unknown field `colour`"), "{all}");
        assert!(all.contains("limits.max_line: invalid type"), "{all}");
        assert!(all.contains("log.filter: invalid type"), "{all}");
        assert!(p.broken_listener);
        assert_eq!(p.broken_upstreams, vec!["u".to_owned()]);
    }

    #[test]
    fn missing_field_names_the_table() {
        let p = parse("[tls]\ncert_file = 'a'\n");
        assert_eq!(paths(&p), vec!["tls: missing field `key_file`".to_owned()]);
    }

    #[test]
    fn table_instead_of_array_is_reported() {
        let p = parse("[listener]\nname = 'x'\n");
        assert!(paths(&p)[0].starts_with("listener: expected an array of tables"));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let p = parse("[log]\nfilter = \n");
        let all = paths(&p).join("\n");
        assert_eq!(p.errors.len(), 1);
        assert!(all.starts_with("line 2, column "), "{all}");
    }
}
