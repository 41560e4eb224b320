//! Stage: directory, LDAP layer. A [`Snapshot`] of the organisation as an LDAP / Active Directory
//! server holds it in, merged with `directory.toml`'s policy into one [`Directory`]; and the
//! [`Diff`] between two snapshots (`mailgate directory sync --dry-run`, the safety valve).
//!
//! The snapshot is plain data, already mapped from LDAP entries by `crate::ldap` (which does the
//! network I/O): each user's email, OU path (its DN below `base_dn`, through `ou_map`), kind,
//! suspension and per-user switches; each group's email and member emails (member DNs resolved
//! against the users and groups found). It is also the on-disk cache (`cache_file`, JSON), so
//! a restart during a directory outage serves the last good sync.
//!
//! Merging adds the snapshot's users and groups to those the file declares, and every OU path
//! they sit in (and its ancestors) that the file does not declare, with no settings of its own:
//! it inherits from its parent. The file keeps the policy: the root OU's settings, OU settings
//! by path, group policies and restrictions by group email. The merged directory goes through
//! the same validation as a file-only one, so a nesting cycle in LDAP, or a new offender in a
//! locked group, is refused exactly like in the file; such an error names the entry's DN. A
//! member that breaks an (unlocked) group's restriction is reported, never refused: nothing
//! that a directory server holds was added through mailgate (`Directory::added_offenders`).
//!
//! Must not: do I/O, read the clock, or log.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::file::{self, GroupFile, OuFile, PrincipalKindFile, UserFile};
use super::{Directory, Error, Errors};

/// One synced user or service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapUser {
    pub dn: String,
    /// Lowercase.
    pub email: String,
    /// `/Sales/Interns`, after `ou_map`.
    pub ou: String,
    #[serde(default)]
    pub service: bool,
    #[serde(default)]
    pub suspended: bool,
    #[serde(default)]
    pub pop_off: bool,
    #[serde(default)]
    pub imap_off: bool,
}

/// One synced group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapGroup {
    pub dn: String,
    /// Lowercase.
    pub email: String,
    /// Member emails (users and groups), lowercase, sorted, each once.
    pub members: Vec<String>,
}

/// What one sync read. Sorted by email, so two snapshots of the same directory compare equal
/// and the cache file diffs cleanly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub users: Vec<LdapUser>,
    pub groups: Vec<LdapGroup>,
    /// Entries left out, one line each (no email, member DN outside the synced entries): for
    /// the operator, never an error.
    #[serde(default)]
    pub skipped: Vec<String>,
}

impl Snapshot {
    /// Sorts users and groups by email, so equal directories give equal snapshots.
    pub fn normalize(&mut self) {
        self.users.sort_by(|a, b| a.email.cmp(&b.email));
        self.groups.sort_by(|a, b| a.email.cmp(&b.email));
        for g in &mut self.groups {
            g.members.sort();
            g.members.dedup();
        }
    }

    /// Every OU path an LDAP user sits in, with its ancestors.
    pub fn ou_paths(&self) -> BTreeSet<String> {
        self.users.iter().flat_map(|u| ancestors(&u.ou)).collect()
    }
}

/// `/Sales/Interns` → `/Sales/Interns`, `/Sales`, `/`. Not an OU path (no leading `/`): none,
/// the validator reports it.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !path.starts_with('/') {
        return out;
    }
    let mut at = path;
    loop {
        out.push(at.to_owned());
        match at.rfind('/') {
            Some(0) if at.len() > 1 => at = "/",
            Some(i) if i > 0 => at = &at[..i],
            _ => break,
        }
    }
    out
}

/// Offsets past any realistic file index: an LDAP entry's index in the merged
/// [`file::Parsed`] is this plus its position, so errors about it can be renamed to its DN.
const LDAP_INDEX: usize = 1 << 40;

/// `directory.toml` text plus `snapshot` → the directory, validated as a whole. Errors about
/// an LDAP entry name it `ldap:<DN>` instead of a table index.
pub fn merge(text: &str, snapshot: &Snapshot) -> Result<Directory, Errors> {
    let mut parsed = file::parse(text);
    if matches!(parsed.errors.first(), Some(Error::Syntax { .. })) {
        return Err(Errors(parsed.errors));
    }
    let declared: HashSet<String> = parsed.ous.iter().map(|(_, o)| o.path.clone()).collect();
    let mut next_ou = parsed.ous.len();
    // The file sets OU settings by path; the tree itself is LDAP's, so a file OU's ancestors
    // need not be declared (`/Sales/Interns` alone is enough).
    let mut paths = snapshot.ou_paths();
    for path in &declared {
        paths.extend(ancestors(path));
    }
    for path in paths {
        if !declared.contains(&path) {
            parsed.ous.push((LDAP_INDEX + next_ou, implicit_ou(path)));
            next_ou += 1;
        }
    }
    for (k, u) in snapshot.users.iter().enumerate() {
        parsed.users.push((
            LDAP_INDEX + k,
            UserFile {
                email: u.email.clone(),
                ou: u.ou.clone(),
                kind: if u.service {
                    PrincipalKindFile::Service
                } else {
                    PrincipalKindFile::User
                },
                suspended: u.suspended,
                pop: u.pop_off.then_some(false),
                imap: u.imap_off.then_some(false),
                name: None,
                upstream: None,
            },
        ));
    }
    // A group the file also declares is one group: the file gives its restriction and policy,
    // LDAP its members (added to any the file lists, e.g. service accounts LDAP does not hold).
    let file_groups: HashMap<String, usize> = parsed
        .groups
        .iter()
        .enumerate()
        .map(|(pos, (_, g))| (g.email.to_lowercase(), pos))
        .collect();
    for (k, g) in snapshot.groups.iter().enumerate() {
        match file_groups.get(&g.email) {
            Some(&pos) => {
                if let Some((_, file_group)) = parsed.groups.get_mut(pos) {
                    let mut have: HashSet<String> = file_group
                        .members
                        .iter()
                        .map(|m| m.to_lowercase())
                        .collect();
                    for m in &g.members {
                        if have.insert(m.clone()) {
                            file_group.members.push(m.clone());
                        }
                    }
                }
            }
            None => parsed.groups.push((
                LDAP_INDEX + k,
                GroupFile {
                    email: g.email.clone(),
                    description: None,
                    members: g.members.clone(),
                    allowed_member_kinds: None,
                    internal_only: false,
                    member_restriction: None,
                    locked: false,
                    grandfathered: Vec::new(),
                    policy: None,
                },
            )),
        }
    }
    let mut directory = super::load::from_parsed(parsed).map_err(|e| rename(e, snapshot))?;
    directory.mark_ldap(snapshot);
    Ok(directory)
}

fn implicit_ou(path: String) -> OuFile {
    OuFile {
        path,
        description: None,
        pop: None,
        imap: None,
        imap_clients: None,
        imap_allowed_client_ids: None,
        password_logins: None,
        upstream: None,
        enforce: None,
        enforce_from: None,
    }
}

/// `user[1099511627776].ou` → `ldap:uid=x,ou=…: ou`.
fn rename(errors: Errors, snapshot: &Snapshot) -> Errors {
    let name = |path: &str| -> Option<String> {
        let (kind, rest) = path.split_once('[')?;
        let (index, tail) = rest.split_once(']')?;
        let index: usize = index.parse().ok()?;
        let k = index.checked_sub(LDAP_INDEX)?;
        let dn = match kind {
            "user" => snapshot.users.get(k).map(|u| u.dn.as_str()),
            "group" => snapshot.groups.get(k).map(|g| g.dn.as_str()),
            "ou" => Some("(OU from the LDAP tree)"),
            _ => None,
        }?;
        Some(format!("ldap:{dn}{tail}"))
    };
    Errors(
        errors
            .0
            .into_iter()
            .map(|e| match e {
                Error::Invalid { path, message } => Error::Invalid {
                    path: name(&path).unwrap_or(path),
                    message,
                },
                Error::Schema { path, message } => Error::Schema {
                    path: name(&path).unwrap_or(path),
                    message,
                },
                other => other,
            })
            .collect(),
    )
}

/// OU paths `directory.toml` configures that no LDAP user sits in (nor below): a warning, not
/// an error (the tree may be about to gain them, or lost them in a reorganisation).
pub fn unused_ous(text: &str, snapshot: &Snapshot) -> Vec<String> {
    let paths = snapshot.ou_paths();
    let parsed = file::parse(text);
    let file_user_ous: HashSet<&str> = parsed.users.iter().map(|(_, u)| u.ou.as_str()).collect();
    parsed
        .ous
        .iter()
        .map(|(_, o)| o.path.clone())
        .filter(|p| p != "/" && !paths.contains(p) && !file_user_ous.contains(p.as_str()))
        .collect()
}

/// What a sync would change, from `old` (the directory in force) to `new`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub users_before: usize,
    pub users_after: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// `(email, from, to)`.
    pub moved: Vec<(String, String, String)>,
    pub suspended: Vec<String>,
    pub unsuspended: Vec<String>,
    /// Users whose kind or pop/imap switches changed.
    pub changed: Vec<String>,
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
    /// `(email, members added, members removed)`.
    pub groups_changed: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Diff {
    pub fn between(old: &Snapshot, new: &Snapshot) -> Diff {
        let before: BTreeMap<&str, &LdapUser> =
            old.users.iter().map(|u| (u.email.as_str(), u)).collect();
        let after: BTreeMap<&str, &LdapUser> =
            new.users.iter().map(|u| (u.email.as_str(), u)).collect();
        let mut d = Diff {
            users_before: before.len(),
            users_after: after.len(),
            ..Diff::default()
        };
        for (email, u) in &after {
            let Some(was) = before.get(email) else {
                d.added.push((*email).to_owned());
                continue;
            };
            if was.ou != u.ou {
                d.moved
                    .push(((*email).to_owned(), was.ou.clone(), u.ou.clone()));
            }
            match (was.suspended, u.suspended) {
                (false, true) => d.suspended.push((*email).to_owned()),
                (true, false) => d.unsuspended.push((*email).to_owned()),
                _ => {}
            }
            if (was.service, was.pop_off, was.imap_off) != (u.service, u.pop_off, u.imap_off) {
                d.changed.push((*email).to_owned());
            }
        }
        d.removed = before
            .keys()
            .filter(|e| !after.contains_key(*e))
            .map(|e| (*e).to_owned())
            .collect();
        let gb: BTreeMap<&str, &LdapGroup> =
            old.groups.iter().map(|g| (g.email.as_str(), g)).collect();
        let ga: BTreeMap<&str, &LdapGroup> =
            new.groups.iter().map(|g| (g.email.as_str(), g)).collect();
        for (email, g) in &ga {
            let Some(was) = gb.get(email) else {
                d.groups_added.push((*email).to_owned());
                continue;
            };
            let old_m: BTreeSet<&String> = was.members.iter().collect();
            let new_m: BTreeSet<&String> = g.members.iter().collect();
            let plus: Vec<String> = new_m.difference(&old_m).map(|s| (*s).clone()).collect();
            let minus: Vec<String> = old_m.difference(&new_m).map(|s| (*s).clone()).collect();
            if !plus.is_empty() || !minus.is_empty() {
                d.groups_changed.push(((*email).to_owned(), plus, minus));
            }
        }
        d.groups_removed = gb
            .keys()
            .filter(|e| !ga.contains_key(*e))
            .map(|e| (*e).to_owned())
            .collect();
        d
    }

    /// Share of the users in force that this sync removes (0 when there were none).
    pub fn removed_fraction(&self) -> f64 {
        if self.users_before == 0 {
            0.0
        } else {
            self.removed.len() as f64 / self.users_before as f64
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.moved.is_empty()
            && self.suspended.is_empty()
            && self.unsuspended.is_empty()
            && self.changed.is_empty()
            && self.groups_added.is_empty()
            && self.groups_removed.is_empty()
            && self.groups_changed.is_empty()
    }

    /// One line of counts, for logs and the audit record.
    pub fn summary(&self) -> String {
        format!(
            "{} → {} users: +{} -{} moved {} suspended {} unsuspended {} changed {}; groups +{} \
             -{} changed {}",
            self.users_before,
            self.users_after,
            self.added.len(),
            self.removed.len(),
            self.moved.len(),
            self.suspended.len(),
            self.unsuspended.len(),
            self.changed.len(),
            self.groups_added.len(),
            self.groups_removed.len(),
            self.groups_changed.len()
        )
    }
}

impl fmt::Display for Diff {
    /// Every change, one per line, then the summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.added {
            writeln!(f, "user added      {e}")?;
        }
        for e in &self.removed {
            writeln!(f, "user removed    {e}")?;
        }
        for (e, from, to) in &self.moved {
            writeln!(f, "user moved      {e}  {from} → {to}")?;
        }
        for e in &self.suspended {
            writeln!(f, "user suspended  {e}")?;
        }
        for e in &self.unsuspended {
            writeln!(f, "user restored   {e}")?;
        }
        for e in &self.changed {
            writeln!(f, "user changed    {e}  (kind or pop/imap switch)")?;
        }
        for e in &self.groups_added {
            writeln!(f, "group added     {e}")?;
        }
        for e in &self.groups_removed {
            writeln!(f, "group removed   {e}")?;
        }
        for (e, plus, minus) in &self.groups_changed {
            let mut parts = Vec::new();
            if !plus.is_empty() {
                parts.push(format!("+{}", plus.join(" +")));
            }
            if !minus.is_empty() {
                parts.push(format!("-{}", minus.join(" -")));
            }
            writeln!(f, "group changed   {e}  {}", parts.join(" "))?;
        }
        write!(f, "{}", self.summary())
    }
}

/// The DN below `base_dn` as an OU path: `uid=carol,ou=Interns,ou=Sales,dc=example,dc=com`
/// under `dc=example,dc=com` is `/Sales/Interns` (the entry's own RDN is not part of it; every
/// other RDN is, whatever its type, so Active Directory's `CN=Users` container is `/Users`).
/// `None` when the DN is not below `base_dn`.
pub fn ou_path(dn: &str, base_dn: &str) -> Option<String> {
    let rdns = split_dn(dn);
    let base = split_dn(base_dn);
    if rdns.len() <= base.len() {
        return None;
    }
    let (below, tail) = rdns.split_at(rdns.len() - base.len());
    let same = tail
        .iter()
        .zip(&base)
        .all(|(a, b)| a.0.eq_ignore_ascii_case(&b.0) && a.1.eq_ignore_ascii_case(&b.1));
    if !same {
        return None;
    }
    // `below[0]` is the entry itself.
    let segments: Vec<&str> = below
        .iter()
        .skip(1)
        .rev()
        .map(|(_, v)| v.as_str())
        .collect();
    if segments.is_empty() {
        return Some("/".to_owned());
    }
    Some(format!("/{}", segments.join("/")))
}

/// Applies the longest matching `ou_map` prefix: with `{"/Staff" = "/"}`, `/Staff/Sales` is
/// `/Sales`. Matches whole segments only (`/Staffing` is not under `/Staff`).
pub fn map_ou(path: &str, ou_map: &BTreeMap<String, String>) -> String {
    let mut best: Option<(&str, &str)> = None;
    for (from, to) in ou_map {
        let under = path == from
            || from == "/"
            || path
                .strip_prefix(from.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if under && best.is_none_or(|(b, _)| from.len() > b.len()) {
            best = Some((from, to));
        }
    }
    let Some((from, to)) = best else {
        return path.to_owned();
    };
    let rest = if from == "/" {
        path
    } else {
        &path[from.len()..]
    };
    match (to, rest) {
        (_, "") | (_, "/") => to.to_owned(),
        ("/", rest) => rest.to_owned(),
        (to, rest) => format!("{to}{rest}"),
    }
}

/// A DN for comparison: RDN types and values lowercased, spaces around separators dropped, so
/// `CN=Sales, OU=Groups,DC=Example,DC=com` and `cn=sales,ou=groups,dc=example,dc=com` match.
pub fn normalize_dn(dn: &str) -> String {
    split_dn(dn)
        .iter()
        .map(|(t, v)| format!("{}={}", t.to_lowercase(), v.to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// RFC 4514 section 3: RDNs separated by unescaped `,`; `\,` `\+` `\"` `\\` … and `\XX` hex
/// escapes unescaped in the value. A multi-valued RDN (`+`) stays one value.
fn split_dn(dn: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Bytes: `\C3\A9` is one UTF-8 character escaped byte by byte.
    let mut current: Vec<u8> = Vec::new();
    let push = |bytes: &[u8], out: &mut Vec<(String, String)>| {
        let s = String::from_utf8_lossy(bytes);
        if let Some((t, v)) = s.split_once('=') {
            out.push((t.trim().to_owned(), v.trim().to_owned()));
        }
    };
    let mut bytes = dn.bytes().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                let Some(next) = bytes.next() else { break };
                let high = char::from(next).to_digit(16);
                let low = bytes.peek().and_then(|&l| char::from(l).to_digit(16));
                match (high, low) {
                    (Some(h), Some(l)) => {
                        bytes.next();
                        // Two hex digits are at most 0xff.
                        current.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    }
                    _ => current.push(next),
                }
            }
            b',' | b';' => {
                push(&current, &mut out);
                current.clear();
            }
            b => current.push(b),
        }
    }
    push(&current, &mut out);
    out
}

impl Directory {
    /// Records which principals and groups came from LDAP, by email (the rest are `file:`).
    fn mark_ldap(&mut self, snapshot: &Snapshot) {
        let users: HashMap<&str, &str> = snapshot
            .users
            .iter()
            .map(|u| (u.email.as_str(), u.dn.as_str()))
            .collect();
        for p in &mut self.principals {
            if let Some(dn) = users.get(&*p.email) {
                p.origin = Origin::Ldap(Arc::from(*dn));
            }
        }
        let groups: HashMap<&str, &str> = snapshot
            .groups
            .iter()
            .map(|g| (g.email.as_str(), g.dn.as_str()))
            .collect();
        for g in &mut self.groups {
            if let Some(dn) = groups.get(&*g.email) {
                g.origin = Origin::Ldap(Arc::from(*dn));
            }
        }
    }
}

/// Where a principal or group was declared: `file:` or `ldap:<DN>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Origin {
    #[default]
    File,
    Ldap(Arc<str>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File => f.write_str("file:"),
            Origin::Ldap(dn) => write!(f, "ldap:{dn}"),
        }
    }
}

#[cfg(test)]
mod tests;
