//! Stage: LDAP source. `[policy.ldap]` in, a [`Snapshot`] of the organisation out: connect (each
//! URL in order until one answers), TLS (`ldaps://`, or StartTLS on `ldap://`), simple bind,
//! then two paged subtree searches (RFC 2696) below `base_dn`, one for users and one for groups.
//! Each entry is mapped to plain data here, so everything after is I/O-free
//! (`crate::directory::ldap`).
//!
//! Entries that cannot be used are left out and listed in [`Snapshot::skipped`]: a user or
//! group without an email, a member DN that is not among the synced users and groups (a
//! computer account, an entry outside `base_dn`, OpenLDAP's placeholder member of an empty
//! `groupOfNames`).
//!
//! [`sync`] runs the fail-static cycle (start, every `refresh`, SIGHUP, on request) on top.
//!
//! Must not: log the bind password (it is only ever passed to the bind).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use crate::config::ldap::{LdapConfig, url_host};
use crate::directory::ldap::{LdapGroup, LdapUser, Snapshot, map_ou, normalize_dn, ou_path};

pub mod sync;

/// Why a sync did not produce a snapshot (or was not applied). `cause()` is the metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyncError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// Wrong `bind_dn` or password, or a locked bind account.
    #[error("bind as {dn:?} refused by {url}: {reason}")]
    Bind {
        url: String,
        dn: String,
        reason: String,
    },
    #[error("search below {base:?} failed: {reason}")]
    Search { base: String, reason: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The sync read fine but does not merge with `directory.toml` (a restriction, a cycle).
    #[error("the synced directory is invalid:\n{0}")]
    Invalid(String),
    /// It would remove more than `max_removed_fraction` of the users.
    #[error(
        "refused by the safety valve: it would remove {removed} of {before} users \
         ({percent:.1} %, above max_removed_fraction {max}); check the directory server, \
         then apply it with `mailgate directory sync --force`"
    )]
    SafetyValve {
        removed: usize,
        before: usize,
        percent: f64,
        max: f64,
    },
    #[error("cache file {file}: {reason}")]
    Cache { file: String, reason: String },
}

impl SyncError {
    /// Every `cause`, so each series exists at 0 from the start (an alert's `increase()` sees
    /// the first failure).
    pub const CAUSES: [&'static str; 7] = [
        "connect",
        "bind",
        "search",
        "timeout",
        "invalid",
        "safety_valve",
        "cache",
    ];

    /// The `cause` label of `mailgate_directory_sync_failures_total`.
    pub fn cause(&self) -> &'static str {
        match self {
            SyncError::Connect { .. } => "connect",
            SyncError::Bind { .. } => "bind",
            SyncError::Search { .. } => "search",
            SyncError::Timeout { .. } => "timeout",
            SyncError::Invalid(_) => "invalid",
            SyncError::SafetyValve { .. } => "safety_valve",
            SyncError::Cache { .. } => "cache",
        }
    }
}

/// Reads the whole organisation from the first URL that answers. A bind refusal is not
/// retried on the next URL only when all of them refuse: replicas share their accounts, but a
/// half-replicated one may not have the bind entry yet.
pub async fn fetch(config: &LdapConfig) -> Result<Snapshot, SyncError> {
    let config = Arc::new(config.clone());
    // `SearchEntry::construct` panics on an undecodable entry; a malformed answer must fail
    // the sync, not take the process down, so the whole read runs as its own task.
    let task = tokio::spawn({
        let config = config.clone();
        async move { fetch_any(&config).await }
    });
    match task.await {
        Ok(result) => result,
        Err(_) => Err(SyncError::Search {
            base: config.base_dn.clone(),
            reason: "the server sent an entry that could not be decoded".to_owned(),
        }),
    }
}

async fn fetch_any(config: &LdapConfig) -> Result<Snapshot, SyncError> {
    let mut last = None;
    for url in &config.urls {
        match fetch_from(config, url).await {
            Ok(snapshot) => return Ok(snapshot),
            Err(e) => {
                tracing::warn!(url, error = %e, "LDAP server failed; trying the next URL");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(SyncError::Connect {
        url: String::new(),
        reason: "no URL configured".to_owned(),
    }))
}

async fn fetch_from(config: &LdapConfig, url: &str) -> Result<Snapshot, SyncError> {
    let timeout = config.timeout;
    let connect_err = |reason: String| SyncError::Connect {
        url: url.to_owned(),
        reason,
    };
    let (tls, _) = url_host(url).map_err(|e| connect_err(e.to_owned()))?;
    let mut settings = LdapConnSettings::new().set_conn_timeout(timeout);
    if tls || config.starttls {
        settings = settings
            .set_config(client_tls(config).map_err(connect_err)?)
            .set_starttls(!tls && config.starttls);
    }
    let (conn, mut ldap) =
        tokio::time::timeout(timeout, LdapConnAsync::with_settings(settings, url))
            .await
            .map_err(|_| SyncError::Timeout {
                what: format!("connecting to {url}"),
                after: timeout,
            })?
            .map_err(|e| connect_err(e.to_string()))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %e, "LDAP connection ended");
        }
    });
    let result = read(config, url, &mut ldap).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ldap.unbind()).await;
    driver.abort();
    result
}

async fn read(
    config: &LdapConfig,
    url: &str,
    ldap: &mut ldap3::Ldap,
) -> Result<Snapshot, SyncError> {
    let timeout = config.timeout;
    if let Some((dn, password)) = &config.bind {
        let bind_err = |reason: String| SyncError::Bind {
            url: url.to_owned(),
            dn: dn.clone(),
            reason,
        };
        ldap.with_timeout(timeout)
            .simple_bind(dn, password.expose())
            .await
            .map_err(|e| match e {
                ldap3::LdapError::Timeout { .. } => SyncError::Timeout {
                    what: format!("bind to {url}"),
                    after: timeout,
                },
                e => bind_err(e.to_string()),
            })?
            .success()
            .map_err(|e| bind_err(e.to_string()))?;
    }
    let u = &config.users;
    let mut user_attrs: Vec<&str> = u.email.iter().map(String::as_str).collect();
    user_attrs.extend(
        [&u.kind, &u.suspended, &u.pop, &u.imap]
            .into_iter()
            .flatten()
            .map(String::as_str),
    );
    let users = search(ldap, config, &u.filter, user_attrs).await?;
    let g = &config.groups;
    let mut groups = search(
        ldap,
        config,
        &g.filter,
        vec![g.email.as_str(), g.member.as_str()],
    )
    .await?;
    complete_ranges(ldap, config, &mut groups).await?;
    Ok(map_entries(config, users, groups))
}

/// Active Directory returns at most 1500 values of a multi-valued attribute per read
/// (MaxValRange), as `member;range=0-1499`; the rest of a large group's members must be asked
/// for range by range (`member;range=1500-*`, …) until a range ends in `*`. Merged back under
/// the plain attribute name. Other servers never send ranges, so this costs them nothing.
async fn complete_ranges(
    ldap: &mut ldap3::Ldap,
    config: &LdapConfig,
    groups: &mut [SearchEntry],
) -> Result<(), SyncError> {
    let attr = config.groups.member.as_str();
    let search_err = |reason: String| SyncError::Search {
        base: config.base_dn.clone(),
        reason,
    };
    for entry in groups.iter_mut() {
        let Some(key) = entry
            .attrs
            .keys()
            .find(|k| range_of(k, attr).is_some())
            .cloned()
        else {
            continue;
        };
        let mut next = range_of(&key, attr).flatten();
        let mut all = entry.attrs.remove(&key).unwrap_or_default();
        // Each round must move forward; the bound stops a server that keeps answering the
        // same range (10,000 rounds of 1500 is 15 million members).
        let mut rounds = 0;
        while let Some(end) = next {
            rounds += 1;
            if rounds > 10_000 {
                return Err(search_err(format!("{}: endless {attr} ranges", entry.dn)));
            }
            let want = format!("{attr};range={}-*", end + 1);
            let (found, _) = ldap
                .with_timeout(config.timeout)
                .search(
                    &entry.dn,
                    Scope::Base,
                    "(objectClass=*)",
                    vec![want.as_str()],
                )
                .await
                .map_err(|e| search_err(e.to_string()))?
                .success()
                .map_err(|e| search_err(e.to_string()))?;
            let Some(part) = found.into_iter().next().map(SearchEntry::construct) else {
                break;
            };
            let Some((k, values)) = part
                .attrs
                .into_iter()
                .find(|(k, _)| range_of(k, attr).is_some())
            else {
                break;
            };
            all.extend(values);
            next = range_of(&k, attr).flatten().filter(|&e| e > end);
        }
        entry.attrs.insert(attr.to_owned(), all);
    }
    Ok(())
}

/// `member;range=0-1499` → `Some(Some(1499))`; `member;range=1500-*` → `Some(None)` (the last
/// range); any other attribute name → `None`.
fn range_of(key: &str, attr: &str) -> Option<Option<u64>> {
    let (name, range) = key.split_once(";range=")?;
    if !name.eq_ignore_ascii_case(attr) {
        return None;
    }
    let (_, end) = range.split_once('-')?;
    if end == "*" {
        Some(None)
    } else {
        end.parse().ok().map(Some)
    }
}

/// One paged subtree search below `base_dn`; every page bounded by `timeout`.
async fn search(
    ldap: &mut ldap3::Ldap,
    config: &LdapConfig,
    filter: &str,
    attrs: Vec<&str>,
) -> Result<Vec<SearchEntry>, SyncError> {
    let timeout = config.timeout;
    let base = config.base_dn.clone();
    let search_err = |reason: String| SyncError::Search {
        base: base.clone(),
        reason,
    };
    let page = i32::try_from(config.page_size).unwrap_or(500);
    let adapters: Vec<Box<dyn ldap3::adapters::Adapter<_, _>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(page)),
    ];
    let timed_out = || SyncError::Timeout {
        what: format!("search below {:?}", config.base_dn),
        after: timeout,
    };
    let mut stream = tokio::time::timeout(
        timeout,
        ldap.streaming_search_with(adapters, &config.base_dn, Scope::Subtree, filter, attrs),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|e| search_err(e.to_string()))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| search_err(e.to_string()))?;
        match next {
            Some(entry) => out.push(SearchEntry::construct(entry)),
            None => break,
        }
    }
    tokio::time::timeout(timeout, stream.finish())
        .await
        .map_err(|_| timed_out())?
        .success()
        .map_err(|e| search_err(e.to_string()))?;
    Ok(out)
}

/// The first value of `name`, matched case-insensitively (servers answer with the schema's
/// spelling, e.g. `userAccountControl` for `useraccountcontrol`).
fn attr<'a>(entry: &'a SearchEntry, name: &str) -> Option<&'a str> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

fn values<'a>(entry: &'a SearchEntry, name: &str) -> &'a [String] {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or(&[], |(_, v)| v.as_slice())
}

/// `FALSE`, `0`, `off`, `no` (any case): the LDAP Boolean syntax (RFC 4517 section 3.3.3) and
/// the usual spellings of a custom attribute.
fn is_false(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "false" | "0" | "off" | "no"
    )
}

fn email_of(value: &str) -> Option<String> {
    let email = value.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !email.chars().any(char::is_whitespace))
        .then_some(email)
}

/// LDAP entries → snapshot: emails, OU paths, flags; group members from DNs to emails.
fn map_entries(config: &LdapConfig, users: Vec<SearchEntry>, groups: Vec<SearchEntry>) -> Snapshot {
    let u = &config.users;
    let mut snapshot = Snapshot::default();
    let mut by_dn: HashMap<String, String> = HashMap::new();
    for entry in users {
        let Some(email) = u
            .email
            .iter()
            .find_map(|a| attr(&entry, a))
            .and_then(email_of)
        else {
            snapshot.skipped.push(format!(
                "user {}: no usable {}",
                entry.dn,
                u.email.join(" or ")
            ));
            continue;
        };
        let Some(path) = ou_path(&entry.dn, &config.base_dn) else {
            snapshot
                .skipped
                .push(format!("user {}: not below base_dn", entry.dn));
            continue;
        };
        let suspended = match (&u.suspended, u.suspended_mask) {
            (None, _) => false,
            (Some(a), Some(mask)) => attr(&entry, a)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .is_some_and(|v| v & i64::from(mask) != 0),
            (Some(a), None) => attr(&entry, a).is_some_and(|v| !is_false(v)),
        };
        let off = |a: &Option<String>| {
            a.as_deref()
                .and_then(|a| attr(&entry, a))
                .is_some_and(is_false)
        };
        by_dn.insert(normalize_dn(&entry.dn), email.clone());
        snapshot.users.push(LdapUser {
            email,
            ou: map_ou(&path, &config.ou_map),
            service: u
                .kind
                .as_deref()
                .and_then(|a| attr(&entry, a))
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("service")),
            suspended,
            pop_off: off(&u.pop),
            imap_off: off(&u.imap),
            dn: entry.dn,
        });
    }
    let g = &config.groups;
    let mut kept = Vec::new();
    for entry in groups {
        match attr(&entry, &g.email).and_then(email_of) {
            Some(email) => {
                by_dn.insert(normalize_dn(&entry.dn), email.clone());
                kept.push((entry, email));
            }
            None => snapshot.skipped.push(format!(
                "group {}: no usable {} (policy names groups by email)",
                entry.dn, g.email
            )),
        }
    }
    for (entry, email) in kept {
        let mut members = BTreeSet::new();
        let mut unknown = 0usize;
        for dn in values(&entry, &g.member) {
            match by_dn.get(&normalize_dn(dn)) {
                Some(m) if *m != email => {
                    members.insert(m.clone());
                }
                Some(_) => {}
                None => unknown += 1,
            }
        }
        if unknown > 0 {
            snapshot.skipped.push(format!(
                "group {}: {unknown} member DN(s) not among the synced users and groups",
                entry.dn
            ));
        }
        snapshot.groups.push(LdapGroup {
            dn: entry.dn,
            email,
            members: members.into_iter().collect(),
        });
    }
    snapshot.normalize();
    snapshot
}

/// rustls for `ldaps://` and StartTLS: the `ca_file` roots, or the system's.
fn client_tls(config: &LdapConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match &config.ca_file {
        Some(path) => crate::tls::ca_roots(path).map_err(|e| e.to_string())?,
        None => crate::tls::system_roots("ldap").map_err(|e| e.to_string())?,
    };
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_directory_value_ranges() {
        assert_eq!(range_of("member;range=0-1499", "member"), Some(Some(1499)));
        assert_eq!(range_of("Member;range=1500-*", "member"), Some(None));
        assert_eq!(range_of("member", "member"), None);
        assert_eq!(range_of("mail;range=0-1", "member"), None);
        assert_eq!(range_of("member;range=0-x", "member"), None);
    }

    #[test]
    fn falsy_values_and_emails() {
        for v in ["FALSE", "false", "0", " off ", "No"] {
            assert!(is_false(v), "{v}");
        }
        assert!(!is_false("TRUE"));
        assert_eq!(
            email_of(" Ann@Example.COM ").as_deref(),
            Some("ann@example.com")
        );
        for bad in ["ann", "@example.com", "ann@localhost", "a b@example.com"] {
            assert_eq!(email_of(bad), None, "{bad}");
        }
    }
}
