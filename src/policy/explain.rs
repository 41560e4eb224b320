//! `mailgate explain`: the effective settings, where each came from, the group memberships and
//! the decision, built from the same evaluation [`super::decide`] runs. Rendering is plain text
//! (its `Display`); the binary prints it. Pure: no I/O.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Attempt, Decision, Subject};
use crate::directory::ldap::Origin;
use crate::directory::{Directory, ImapClients, PrincipalKind, Settings};
use crate::proto::{Mechanism, Protocol};

/// Everything `mailgate explain` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// As claimed in the attempt.
    pub user: String,
    pub protocol: Protocol,
    pub mechanism: Mechanism,
    pub client_id: Option<String>,
    /// The client catalogue's name for `client_id`, when it has one.
    pub client_name: Option<String>,
    /// `imap_clients` as shown: an allowlist's IDs with their catalogue names.
    pub imap_clients: Option<String>,
    pub standing: Standing,
    /// `None` for an unknown user: nothing applies.
    pub settings: Option<Settings>,
    /// Direct and nested memberships, by group email.
    pub groups: Vec<GroupLine>,
    /// Exactly what [`super::decide`] returns for the same input.
    pub decision: Decision,
    /// For a refusal: whether it is enforced at the time asked, or only recorded as
    /// `would_deny` while the login goes ahead (`enforce = false`).
    pub enforced: bool,
}

/// How the user was matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Known {
        kind: PrincipalKind,
        ou: Arc<str>,
        suspended: bool,
        /// `file:` or `ldap:<DN>`.
        origin: Origin,
    },
    /// Not in the directory; treated as a plain user of the configured default OU.
    DefaultOu {
        ou: Arc<str>,
    },
    Unknown,
}

/// One group membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLine {
    pub email: Arc<str>,
    /// Nested groups it came through, outermost first; empty for a direct membership.
    pub via: Vec<Arc<str>>,
    /// The group policy's priority, when the group carries a policy.
    pub priority: Option<u32>,
    /// `false`: the user breaks the group's membership restriction (or comes through a group
    /// that does), so the group's policy can only restrict, never grant.
    pub compliant: bool,
    /// `file:` or `ldap:<DN>`.
    pub origin: Origin,
}

pub(super) fn build(
    directory: &Directory,
    attempt: &Attempt,
    subject: Subject<'_>,
    decision: Decision,
    now: SystemTime,
) -> Explanation {
    let (standing, settings, groups) = match subject {
        Subject::Known(p, ou) => {
            let groups = p
                .memberships
                .iter()
                .filter_map(|m| {
                    let g = directory.group(m.group)?;
                    Some(GroupLine {
                        email: g.email.clone(),
                        via: m
                            .via
                            .iter()
                            .filter_map(|&v| directory.group(v).map(|g| g.email.clone()))
                            .collect(),
                        priority: g.policy.as_ref().map(|p| p.priority),
                        compliant: m.compliant,
                        origin: g.origin.clone(),
                    })
                })
                .collect();
            let standing = Standing::Known {
                kind: p.kind,
                ou: ou.path.clone(),
                suspended: p.suspended,
                origin: p.origin.clone(),
            };
            (standing, Some(p.effective.clone()), groups)
        }
        Subject::DefaultOu(ou) => (
            Standing::DefaultOu {
                ou: ou.path.clone(),
            },
            Some(ou.effective.clone()),
            Vec::new(),
        ),
        Subject::Unknown => (Standing::Unknown, None, Vec::new()),
    };
    let catalogue = directory.clients();
    let client_id = attempt.token.and_then(|t| t.client_id.clone());
    let imap_clients = settings.as_ref().map(|s| match &s.imap_clients.value {
        ImapClients::All => "all".to_owned(),
        // A catalogued client by its name (once for all its IDs), anything else by its ID.
        ImapClients::Allowlist(ids) => {
            let mut shown: Vec<&str> = Vec::new();
            for id in ids.iter() {
                let label = catalogue.name_of(id).unwrap_or(id);
                if !shown.contains(&label) {
                    shown.push(label);
                }
            }
            format!("allowlist [{}]", shown.join(", "))
        }
    });
    let enforced = match &decision {
        Decision::Deny(d) => d.enforced_at(now),
        Decision::Allow(_) => true,
    };
    Explanation {
        user: attempt.user.to_owned(),
        protocol: attempt.protocol,
        mechanism: attempt.mechanism,
        client_name: client_id
            .as_deref()
            .and_then(|id| catalogue.name_of(id))
            .map(str::to_owned),
        client_id,
        imap_clients,
        standing,
        settings,
        groups,
        decision,
        enforced,
    }
}

fn on_off(v: bool) -> &'static str {
    if v { "on" } else { "off" }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let account = match &self.standing {
            Standing::Known {
                kind,
                ou,
                suspended,
                origin,
            } => format!(
                "{} ({}, ou {ou}{}; from {origin})",
                self.user,
                kind.as_str(),
                if *suspended { ", suspended" } else { "" }
            ),
            Standing::DefaultOu { ou } => {
                format!("{} (not in the directory; default ou {ou})", self.user)
            }
            Standing::Unknown => format!("{} (not in the directory)", self.user),
        };
        let kind = if self.mechanism.is_password() {
            "password"
        } else {
            "oauth"
        };
        writeln!(f, "user       {account}")?;
        writeln!(f, "protocol   {}", self.protocol.as_str())?;
        writeln!(f, "mechanism  {} ({kind})", self.mechanism.as_str())?;
        if let Some(id) = &self.client_id {
            match &self.client_name {
                Some(name) => writeln!(f, "client id  {id} ({name})")?,
                None => writeln!(f, "client id  {id} (not in the client catalogue)")?,
            }
        }
        writeln!(f)?;
        match &self.settings {
            Some(s) => {
                let rows = [
                    (
                        "pop",
                        on_off(s.pop.value).to_owned(),
                        s.pop.source.to_string(),
                    ),
                    (
                        "imap",
                        on_off(s.imap.value).to_owned(),
                        s.imap.source.to_string(),
                    ),
                    (
                        "imap_clients",
                        self.imap_clients
                            .clone()
                            .unwrap_or_else(|| s.imap_clients.value.to_string()),
                        s.imap_clients.source.to_string(),
                    ),
                    (
                        "password_logins",
                        on_off(s.password_logins.value).to_owned(),
                        s.password_logins.source.to_string(),
                    ),
                    (
                        "enforce",
                        s.enforce.value.to_string(),
                        s.enforce.source.to_string(),
                    ),
                    match &s.upstream {
                        Some(u) => ("upstream", u.value.to_string(), u.source.to_string()),
                        None => (
                            "upstream",
                            "the listener's".to_owned(),
                            "listener".to_owned(),
                        ),
                    },
                ];
                let width = rows
                    .iter()
                    .map(|r| r.1.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max("value".len());
                writeln!(f, "{:<16} {:<width$}  source", "setting", "value")?;
                for (name, value, source) in rows {
                    writeln!(f, "{name:<16} {value:<width$}  {source}")?;
                }
            }
            None => writeln!(f, "settings   none apply")?,
        }
        writeln!(f)?;
        if self.groups.is_empty() {
            writeln!(f, "groups     none")?;
        } else {
            writeln!(f, "groups")?;
            let width = self
                .groups
                .iter()
                .map(|g| g.email.chars().count())
                .max()
                .unwrap_or(0);
            for g in &self.groups {
                let how = if g.via.is_empty() {
                    "direct".to_owned()
                } else {
                    let via: Vec<&str> = g.via.iter().map(|v| &**v).collect();
                    format!("via {}", via.join(" → "))
                };
                let policy = match g.priority {
                    Some(p) => format!("policy priority {p}"),
                    None => "no policy".to_owned(),
                };
                let standing = if g.compliant {
                    ""
                } else {
                    "; non-compliant member: this group's policy can restrict, never grant"
                };
                writeln!(
                    f,
                    "  {:<width$}  {how}; {policy}; from {}{standing}",
                    g.email, g.origin
                )?;
            }
        }
        writeln!(f)?;
        match &self.decision {
            Decision::Allow(p) => write!(f, "decision   allow (source {})", p.source),
            Decision::Deny(d) if !self.enforced => write!(
                f,
                "decision   would_deny {} (source {}); report only (enforce from {}): \
                 recorded, and the login goes ahead",
                d.reason.as_str(),
                d.source,
                d.enforce
                    .as_ref()
                    .map_or_else(String::new, |e| e.source.to_string())
            ),
            Decision::Deny(d) => write!(
                f,
                "decision   deny {} (source {})",
                d.reason.as_str(),
                d.source
            ),
        }
    }
}
