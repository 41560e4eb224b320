//! `[policy.ldap]`: the organisation (users, their OU, groups) from an LDAP or Active Directory
//! server, while `directory.toml` keeps the policy.
//!
//! File layer ([`LdapFile`]) and validated layer ([`LdapConfig`]) of one table, as
//! `config/oauth.rs`. A `preset` fills in the filters and attribute names of OpenLDAP or Active
//! Directory; every one can be overridden. The bind password is resolved here
//! (`bind_password_file` read, `bind_password = "env:NAME"` looked up) and never echoed.
//!
//! Must not: contact the server (`mailgate check --connect` and `crate::ldap` do).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::duration;
use crate::secret::Secret;

/// `[policy.ldap]`, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapFile {
    pub preset: Option<Preset>,
    /// One URL or several, tried in order.
    pub url: Option<Urls>,
    pub ca_file: Option<String>,
    pub starttls: Option<bool>,
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    pub bind_password_file: Option<String>,
    pub base_dn: Option<String>,
    pub user_filter: Option<String>,
    pub user_email_attributes: Option<Vec<String>>,
    pub user_kind_attribute: Option<String>,
    pub user_suspended_attribute: Option<String>,
    pub user_suspended_mask: Option<u32>,
    pub user_pop_attribute: Option<String>,
    pub user_imap_attribute: Option<String>,
    pub group_filter: Option<String>,
    pub group_email_attribute: Option<String>,
    pub group_member_attribute: Option<String>,
    #[serde(default)]
    pub ou_map: BTreeMap<String, String>,
    pub refresh: Option<String>,
    pub timeout: Option<String>,
    pub page_size: Option<u32>,
    pub max_removed_fraction: Option<f64>,
    pub cache_file: Option<String>,
}

// As for `LdapConfig`: the only float is compared, never NaN-keyed.
impl Eq for LdapFile {}

/// `url = "ldaps://…"` or `url = ["ldaps://a", "ldaps://b"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Many(Vec<String>),
}

/// `preset = "openldap" | "active_directory"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Openldap,
    ActiveDirectory,
}

/// Validated `[policy.ldap]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LdapConfig {
    pub preset: Preset,
    /// In failover order; each `ldap://` or `ldaps://`.
    pub urls: Vec<String>,
    /// Trust anchors for the server certificate; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// StartTLS on `ldap://` URLs. Always on for a non-loopback `ldap://` (checked at load).
    pub starttls: bool,
    /// `None`: anonymous bind.
    pub bind: Option<(String, Secret<String>)>,
    pub base_dn: String,
    pub users: UserMapping,
    pub groups: GroupMapping,
    /// LDAP-tree OU path prefix → policy OU path.
    pub ou_map: BTreeMap<String, String>,
    pub refresh: Duration,
    /// Connect, bind and each search page.
    pub timeout: Duration,
    pub page_size: u32,
    pub max_removed_fraction: f64,
    pub cache_file: Option<PathBuf>,
}

// `f64` has no `Eq`; the fraction is checked finite at load, so equality is reflexive.
impl Eq for LdapConfig {}

/// How users are found and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMapping {
    pub filter: String,
    /// The first present one is the email (AD: `mail`, then `userPrincipalName`).
    pub email: Vec<String>,
    /// Value `service` (any case) makes a service account.
    pub kind: Option<String>,
    pub suspended: Option<String>,
    /// `Some(mask)`: suspended when the attribute, as an integer, has a bit of `mask` set (AD
    /// `userAccountControl` 0x2 ACCOUNTDISABLE). `None`: suspended when the attribute is
    /// present with a value other than `FALSE`/`0` (OpenLDAP `pwdAccountLockedTime`).
    pub suspended_mask: Option<u32>,
    /// Value `FALSE`/`0`/`off`: the user switch turns the protocol off.
    pub pop: Option<String>,
    pub imap: Option<String>,
}

/// How groups are found and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMapping {
    pub filter: String,
    pub email: String,
    /// DNs of members (users or groups).
    pub member: String,
}

/// 5 minutes: a moved or suspended user is refused within that (plus the sync's own time).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5 * 60);
/// 30 s per operation (connect, bind, each page): a healthy server answers a 500-entry page in
/// milliseconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// 500, as OpenLDAP's `ldapsearch -E pr=500`; Active Directory caps pages at 1000 (MaxPageSize).
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// 10 %: more than that disappearing at once is a broken filter or bind, rarely a layoff.
pub const DEFAULT_MAX_REMOVED_FRACTION: f64 = 0.10;

impl Preset {
    fn users(self) -> UserMapping {
        match self {
            Preset::Openldap => UserMapping {
                filter: "(objectClass=inetOrgPerson)".to_owned(),
                email: vec!["mail".to_owned()],
                kind: None,
                suspended: Some("pwdAccountLockedTime".to_owned()),
                suspended_mask: None,
                pop: None,
                imap: None,
            },
            // objectCategory=person leaves out computer accounts (objectClass=computer derives
            // from user).
            Preset::ActiveDirectory => UserMapping {
                filter: "(&(objectCategory=person)(objectClass=user))".to_owned(),
                email: vec!["mail".to_owned(), "userPrincipalName".to_owned()],
                kind: None,
                suspended: Some("userAccountControl".to_owned()),
                suspended_mask: Some(0x2),
                pop: None,
                imap: None,
            },
        }
    }

    fn groups(self) -> GroupMapping {
        match self {
            Preset::Openldap => GroupMapping {
                filter: "(objectClass=groupOfNames)".to_owned(),
                email: "mail".to_owned(),
                member: "member".to_owned(),
            },
            Preset::ActiveDirectory => GroupMapping {
                filter: "(objectClass=group)".to_owned(),
                email: "mail".to_owned(),
                member: "member".to_owned(),
            },
        }
    }
}

/// Validates `[policy.ldap]`; every problem goes to `errors` under `policy.ldap.KEY`.
pub(super) fn validate(
    f: LdapFile,
    base_dir: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<LdapConfig> {
    let start = errors.len();
    let mut invalid = |key: &str, message: String| {
        errors.push(ConfigError::Invalid {
            path: format!("policy.ldap.{key}"),
            message,
        })
    };
    let Some(preset) = f.preset else {
        invalid(
            "preset",
            "missing: \"openldap\" or \"active_directory\"".to_owned(),
        );
        return None;
    };
    let urls = match f.url {
        None => Vec::new(),
        Some(Urls::One(u)) => vec![u],
        Some(Urls::Many(u)) => u,
    };
    if urls.is_empty() {
        invalid(
            "url",
            "give at least one ldap:// or ldaps:// URL".to_owned(),
        );
    }
    let starttls = f.starttls.unwrap_or(true);
    for u in &urls {
        match url_host(u) {
            Err(why) => invalid("url", format!("{u:?}: {why}")),
            Ok((false, host)) if !starttls && !is_loopback(&host) => invalid(
                "starttls",
                format!(
                    "false with the non-loopback {u:?}: the bind password and the whole \
                     organisation would cross the network in clear; use ldaps:// or StartTLS"
                ),
            ),
            Ok(_) => {}
        }
    }
    let base_dn = f.base_dn.unwrap_or_default();
    if base_dn.trim().is_empty() || !base_dn.contains('=') {
        invalid(
            "base_dn",
            "missing or not a DN (e.g. \"dc=example,dc=com\")".to_owned(),
        );
    }
    let mut password_failed = false;
    let password = match super::secret_ref::resolve(
        "bind_password",
        f.bind_password.as_deref(),
        "bind_password_file",
        f.bind_password_file.as_deref(),
        base_dir,
    ) {
        Ok(p) => p,
        Err((key, message)) => {
            invalid(&key, message);
            password_failed = true;
            None
        }
    };
    let bind = match (f.bind_dn, password) {
        (Some(dn), Some(pw)) => Some((dn, pw)),
        (None, None) => None,
        // Already reported (unreadable file, unset variable).
        (Some(_), None) if password_failed => None,
        (Some(_), None) => {
            invalid(
                "bind_password_file",
                "bind_dn needs bind_password_file or bind_password = \"env:NAME\"".to_owned(),
            );
            None
        }
        (None, Some(_)) => {
            invalid("bind_dn", "a bind password needs a bind_dn".to_owned());
            None
        }
    };
    let mut users = preset.users();
    if let Some(v) = f.user_filter {
        users.filter = v;
    }
    if let Some(v) = f.user_email_attributes {
        if v.is_empty() {
            invalid("user_email_attributes", "must name at least one".to_owned());
        }
        users.email = v;
    }
    users.kind = f.user_kind_attribute.or(users.kind);
    if let Some(v) = f.user_suspended_attribute {
        users.suspended = Some(v);
        users.suspended_mask = None;
    }
    users.suspended_mask = f.user_suspended_mask.or(users.suspended_mask);
    users.pop = f.user_pop_attribute;
    users.imap = f.user_imap_attribute;
    let mut groups = preset.groups();
    if let Some(v) = f.group_filter {
        groups.filter = v;
    }
    if let Some(v) = f.group_email_attribute {
        groups.email = v;
    }
    if let Some(v) = f.group_member_attribute {
        groups.member = v;
    }
    for (key, filter) in [
        ("user_filter", &users.filter),
        ("group_filter", &groups.filter),
    ] {
        // A filter must be parenthesised (RFC 4515 section 3); ldap3 accepts a bare one.
        let parenthesised = filter.starts_with('(') && filter.ends_with(')');
        if !parenthesised || ldap3::parse_filter(filter).is_err() {
            invalid(key, format!("{filter:?} is not an LDAP filter (RFC 4515)"));
        }
    }
    for (from, to) in &f.ou_map {
        for p in [from, to] {
            if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) {
                invalid(
                    "ou_map",
                    format!("{p:?} is not an OU path (\"/\", \"/Sales\")"),
                );
            }
        }
    }
    let mut dur = |key: &str, value: Option<String>, default: Duration| match value {
        None => default,
        Some(v) => match duration::parse_nonzero(&v) {
            Ok(d) => d,
            Err(e) => {
                invalid(key, e.to_string());
                default
            }
        },
    };
    let refresh = dur("refresh", f.refresh, DEFAULT_REFRESH);
    let timeout = dur("timeout", f.timeout, DEFAULT_TIMEOUT);
    let page_size = f.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=1000).contains(&page_size) {
        invalid(
            "page_size",
            "must be 1 to 1000 (Active Directory's MaxPageSize is 1000)".to_owned(),
        );
    }
    let max_removed_fraction = f
        .max_removed_fraction
        .unwrap_or(DEFAULT_MAX_REMOVED_FRACTION);
    if !(0.0..=1.0).contains(&max_removed_fraction) {
        invalid(
            "max_removed_fraction",
            "must be between 0.0 and 1.0 (1.0 turns the safety valve off)".to_owned(),
        );
    }
    if errors.len() > start {
        return None;
    }
    Some(LdapConfig {
        preset,
        urls,
        ca_file: f.ca_file.map(|p| base_dir.join(p)),
        starttls,
        bind,
        base_dn,
        users,
        groups,
        ou_map: f.ou_map,
        refresh,
        timeout,
        page_size,
        max_removed_fraction,
        cache_file: f.cache_file.map(|p| base_dir.join(p)),
    })
}

/// `(is ldaps, host)` of an LDAP URL (RFC 4516), or why it is not one.
pub fn url_host(url: &str) -> Result<(bool, String), &'static str> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("ldaps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("ldap://") {
        (false, rest)
    } else {
        return Err("must start with ldap:// or ldaps://");
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.is_empty() {
        return Err("no host");
    }
    Ok((tls, host.to_owned()))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
