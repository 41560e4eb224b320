//! `mailgate explain`: the effective settings, where each came from, the group memberships and
//! the decision, built from the same evaluation [`super::decide`] runs. Rendering is plain text
//! (its `Display`); the binary prints it. Pure: no I/O.

use std::fmt;
use std::sync::Arc;

use super::{Attempt, Decision, Subject};
use crate::directory::ldap::Origin;
use crate::directory::{Directory, PrincipalKind, Settings};
use crate::proto::{Mechanism, Protocol};

/// Everything `mailgate explain` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// As claimed in the attempt.
    pub user: String,
    pub protocol: Protocol,
    pub mechanism: Mechanism,
    pub client_id: Option<String>,
    pub standing: Standing,
    /// `None` for an unknown user: nothing applies.
    pub settings: Option<Settings>,
    /// Direct and nested memberships, by group email.
    pub groups: Vec<GroupLine>,
    /// Exactly what [`super::decide`] returns for the same input.
    pub decision: Decision,
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
    /// `file:` or `ldap:<DN>`.
    pub origin: Origin,
}

pub(super) fn build(
    directory: &Directory,
    attempt: &Attempt,
    subject: Subject<'_>,
    decision: Decision,
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
    Explanation {
        user: attempt.user.to_owned(),
        protocol: attempt.protocol,
        mechanism: attempt.mechanism,
        client_id: attempt.token.and_then(|t| t.client_id.clone()),
        standing,
        settings,
        groups,
        decision,
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
            writeln!(f, "client id  {id}")?;
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
                        s.imap_clients.value.to_string(),
                        s.imap_clients.source.to_string(),
                    ),
                    (
                        "password_logins",
                        on_off(s.password_logins.value).to_owned(),
                        s.password_logins.source.to_string(),
                    ),
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
                writeln!(
                    f,
                    "  {:<width$}  {how}; {policy}; from {}",
                    g.email, g.origin
                )?;
            }
        }
        writeln!(f)?;
        match &self.decision {
            Decision::Allow(p) => write!(f, "decision   allow (source {})", p.source),
            Decision::Deny(d) => write!(
                f,
                "decision   deny {} (source {})",
                d.reason.as_str(),
                d.source
            ),
        }
    }
}
