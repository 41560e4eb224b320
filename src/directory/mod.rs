//! Stage: directory. `directory.toml` in, a validated, resolved [`Directory`] out.
//!
//! The directory is the organisation as the hosted admin console models it (docs/policy.md): a
//! tree of organisational units, users and service accounts that each sit in one OU, and groups
//! that hold principals and other groups. OUs and groups carry the four policy settings (`pop`,
//! `imap`, `imap_clients`, `password_logins`).
//!
//! Loading resolves everything once, so a login decision is a hash lookup:
//!
//! - each OU's effective settings, inherited down the tree, each with its [`Source`];
//! - each principal's transitive group memberships (with the nesting path) and effective
//!   settings: user switch (off only), else the group policy with the lowest priority number
//!   that sets the value, else the OU's effective value;
//! - each group's [`Compliance`] with its membership restriction.
//!
//! Loading rejects, and reports every instance with its key path (`group[2].members[1]`): unknown
//! or duplicate principals, unknown OUs, a root OU that leaves a setting unset, direct members
//! that break their group's restriction, nesting cycles, duplicate group policy priorities, a
//! user switch set to `true`, and a locked group that gained a non-compliant member.
//!
//! Emails compare case-insensitively (lowercased at load and at lookup). OU paths are exact.
//!
//! Must not: do I/O (the caller reads the file), read the clock, or log.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

pub mod file;
pub mod ldap;
mod load;
pub mod report;

/// The validated, resolved directory. Trusted once built: every reference resolves, there are no
/// nesting cycles, and every principal has a complete set of effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    internal_domains: Vec<String>,
    /// Root first; parents before children.
    ous: Vec<Ou>,
    ou_by_path: HashMap<Arc<str>, OuId>,
    principals: Vec<Principal>,
    principal_by_email: HashMap<Arc<str>, usize>,
    /// In file order.
    groups: Vec<Group>,
    group_by_email: HashMap<Arc<str>, GroupId>,
    /// Where an unknown user is placed, when configured (`[policy] default_ou`).
    default_ou: Option<OuId>,
    /// The built-in "no policy" directory: its values report the source `default`.
    builtin: bool,
    /// `[[shared_mailbox]]`, in file order; addresses unique and not a user's.
    shared: Vec<SharedMailbox>,
}

/// A shared mailbox assigned users open with the grant's token (`crate::grants`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMailbox {
    /// Lowercase.
    pub address: Arc<str>,
    /// `[[upstream]]` names, at most one per protocol (checked by the config loader).
    pub upstreams: Vec<Arc<str>>,
    pub grant: Arc<str>,
    /// Direct assignments; a group's nested members are assigned through it.
    pub assigned: Vec<Member>,
    /// `None`: every protocol an upstream is named for.
    pub protocols: Option<Vec<crate::proto::Protocol>>,
}

/// Index of an OU in its [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuId(usize);

/// Index of a group in its [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(usize);

/// An organisational unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ou {
    /// `/`, `/Sales`, `/Sales/Interns`.
    pub path: Arc<str>,
    /// `None` only for the root.
    pub parent: Option<OuId>,
    /// What this OU sets itself; unset values inherit.
    pub own: PartialSettings,
    /// Resolved down the tree.
    pub effective: Settings,
}

/// A user or service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Lowercase.
    pub email: Arc<str>,
    pub kind: PrincipalKind,
    pub ou: OuId,
    pub suspended: bool,
    /// The user's own switches. `true` means the user turned that protocol off.
    pub pop_off: bool,
    pub imap_off: bool,
    /// Every group the principal belongs to, directly or through nesting, sorted by group email.
    pub memberships: Vec<Membership>,
    /// User switch, then group policy, then OU.
    pub effective: Settings,
    /// `file:` or `ldap:<DN>`.
    pub origin: ldap::Origin,
}

/// One (possibly indirect) group membership of a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub group: GroupId,
    /// The groups between `group` and the principal, outermost first; empty for a direct member.
    pub via: Vec<GroupId>,
}

/// `kind` of a `[[user]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    User,
    Service,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
        }
    }

    pub fn member_kind(self) -> MemberKind {
        match self {
            PrincipalKind::User => MemberKind::User,
            PrincipalKind::Service => MemberKind::Service,
        }
    }
}

/// What a group member can be; a group restricts its membership to a set of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    User,
    Service,
    Group,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::Service => "service",
            MemberKind::Group => "group",
        }
    }
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Lowercase.
    pub email: Arc<str>,
    pub members: Vec<Member>,
    pub restriction: Restriction,
    pub locked: bool,
    pub policy: Option<GroupPolicy>,
    pub compliance: GroupReport,
    /// `file:` or `ldap:<DN>`.
    pub origin: ldap::Origin,
}

/// A direct member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// Index into the directory's principals.
    Principal(usize),
    Group(GroupId),
}

/// A group's membership restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    /// Default: all three kinds.
    pub allowed_kinds: Vec<MemberKind>,
    /// Members' email domains must be among the directory's internal domains.
    pub internal_only: bool,
}

impl Restriction {
    /// Is this restriction a no-op?
    pub fn is_open(&self) -> bool {
        !self.internal_only
            && [MemberKind::User, MemberKind::Service, MemberKind::Group]
                .iter()
                .all(|k| self.allowed_kinds.contains(k))
    }
}

/// A group policy: settings that beat the OU's for every (transitive) member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    /// Lower wins. Unique across the directory, so the order is never ambiguous.
    pub priority: u32,
    pub settings: PartialSettings,
}

/// Which IMAP clients may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImapClients {
    /// Any IMAP client, password or OAuth.
    All,
    /// Only OAuth clients with one of these client IDs. Password logins cannot be on the list.
    Allowlist(Arc<[String]>),
}

impl ImapClients {
    pub fn allows(&self, client_id: Option<&str>) -> bool {
        match self {
            ImapClients::All => true,
            ImapClients::Allowlist(ids) => {
                client_id.is_some_and(|id| ids.iter().any(|allowed| allowed == id))
            }
        }
    }
}

impl fmt::Display for ImapClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImapClients::All => f.write_str("all"),
            ImapClients::Allowlist(ids) => write!(f, "allowlist [{}]", ids.join(", ")),
        }
    }
}

/// Settings as one OU or group policy writes them; `None` is "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialSettings {
    pub pop: Option<bool>,
    pub imap: Option<bool>,
    pub imap_clients: Option<ImapClients>,
    pub password_logins: Option<bool>,
}

impl PartialSettings {
    pub fn is_empty(&self) -> bool {
        self.pop.is_none()
            && self.imap.is_none()
            && self.imap_clients.is_none()
            && self.password_logins.is_none()
    }
}

/// The four settings, every one resolved and carrying where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub pop: Sourced<bool>,
    pub imap: Sourced<bool>,
    pub imap_clients: Sourced<ImapClients>,
    pub password_logins: Sourced<bool>,
}

/// A resolved value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// Where an effective value came from. Displayed as in the audit `policy_source`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The built-in directory used when no `[policy]` is configured.
    Default,
    /// `ou:/Sales`.
    Ou(Arc<str>),
    /// `group:imap-pilot@example.com`.
    Group(Arc<str>),
    /// The user's own switch.
    User,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Ou(path) => write!(f, "ou:{path}"),
            Source::Group(email) => write!(f, "group:{email}"),
            Source::User => f.write_str("user"),
        }
    }
}

/// A group's standing with its membership restriction (`mailgate groups`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    pub state: Compliance,
    /// Indirect members that break the restriction, each once, by the shortest nesting path.
    pub offenders: Vec<Offender>,
}

/// The three states of the hosted console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compliance {
    /// No member, direct or indirect, breaks the restriction (or there is none).
    Compliant,
    /// An indirect member (through a nested group) breaks the restriction.
    NonCompliant,
    /// Non-compliant, and `locked = true`: the offenders are frozen to the ones listed in
    /// `grandfathered`; loading rejects any other non-compliant member, so none can be added.
    NonCompliantLocked,
}

impl Compliance {
    pub fn as_str(self) -> &'static str {
        match self {
            Compliance::Compliant => "compliant",
            Compliance::NonCompliant => "non-compliant",
            Compliance::NonCompliantLocked => "non-compliant-locked",
        }
    }
}

/// An indirect member that breaks a group's restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    pub email: Arc<str>,
    pub kind: MemberKind,
    pub rule: Rule,
    /// The nested groups it came through, outermost first (never empty: direct members that
    /// break a restriction are load errors).
    pub via: Vec<Arc<str>>,
}

/// Which part of a restriction a member breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Its kind is not in `allowed_member_kinds`.
    Kind,
    /// `internal_only`, and its domain is not internal.
    External,
}

impl Directory {
    /// Validates `directory.toml` text. Every problem is reported, each with its key path.
    pub fn from_toml(text: &str) -> Result<Directory, Errors> {
        load::from_toml(text)
    }

    /// `directory.toml` text plus the users, groups and OUs of an LDAP sync, validated as one.
    pub fn from_toml_and_ldap(text: &str, snapshot: &ldap::Snapshot) -> Result<Directory, Errors> {
        ldap::merge(text, snapshot)
    }

    /// The built-in directory used when no `[policy]` is configured: no users, a root OU that
    /// allows everything (password logins included), and every login placed in it. That is "no
    /// policy: every login the upstream accepts". Its values report the source `default`.
    pub fn allow_all() -> Directory {
        load::allow_all()
    }

    /// Places unknown users in the OU at `path` (decision step 1 in docs/policy.md: "or the
    /// configured default OU"). `Err` names the path when there is no such OU.
    pub fn with_default_ou(mut self, path: &str) -> Result<Directory, Error> {
        match self.ou_by_path.get(path) {
            Some(&id) => {
                self.default_ou = Some(id);
                Ok(self)
            }
            None => Err(Error::Invalid {
                path: "default_ou".to_owned(),
                message: format!("no OU \"{path}\" in the directory"),
            }),
        }
    }

    /// Is this [`Directory::allow_all`]?
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The principal with this email, case-insensitively.
    pub fn principal(&self, email: &str) -> Option<&Principal> {
        let key = lowercase(email);
        self.principal_by_email
            .get(key.as_ref())
            .and_then(|&i| self.principals.get(i))
    }

    /// The group with this email, case-insensitively.
    pub fn group_by_email(&self, email: &str) -> Option<&Group> {
        let key = lowercase(email);
        self.group_by_email
            .get(key.as_ref())
            .and_then(|&id| self.group(id))
    }

    /// Where unknown users are placed, when configured.
    pub fn default_ou(&self) -> Option<&Ou> {
        self.default_ou.and_then(|id| self.ou(id))
    }

    /// `None` only for an id from another directory (e.g. one held across a reload).
    pub fn ou(&self, id: OuId) -> Option<&Ou> {
        self.ous.get(id.0)
    }

    pub fn ou_by_path(&self, path: &str) -> Option<&Ou> {
        self.ou_by_path.get(path).and_then(|&id| self.ou(id))
    }

    /// `None` only for an id from another directory (e.g. one held across a reload).
    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(id.0)
    }

    /// Every OU, root first, parents before children.
    pub fn ous(&self) -> &[Ou] {
        &self.ous
    }

    /// Every user and service account, in file order.
    pub fn principals(&self) -> &[Principal] {
        &self.principals
    }

    /// Every group, in file order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// `[[shared_mailbox]]`, in file order.
    pub fn shared_mailboxes(&self) -> &[SharedMailbox] {
        &self.shared
    }

    /// The shared mailbox with this address (any case).
    pub fn shared_mailbox(&self, address: &str) -> Option<&SharedMailbox> {
        let address = lowercase(address);
        self.shared.iter().find(|m| *m.address == *address)
    }

    pub fn internal_domains(&self) -> &[String] {
        &self.internal_domains
    }

    /// The email of a direct member; `None` only for a member of another directory.
    pub fn member_email(&self, member: Member) -> Option<&str> {
        match member {
            Member::Principal(i) => self.principals.get(i).map(|p| &*p.email),
            Member::Group(id) => self.group(id).map(|g| &*g.email),
        }
    }
}

/// Lowercases only when needed: most logins arrive lowercase already.
pub(crate) fn lowercase(email: &str) -> Cow<'_, str> {
    if email.chars().any(char::is_uppercase) {
        Cow::Owned(email.to_lowercase())
    } else {
        Cow::Borrowed(email)
    }
}

/// The domain part of an email, lowercase input assumed.
pub(crate) fn domain(email: &str) -> &str {
    email.rsplit_once('@').map_or("", |(_, d)| d)
}

/// One problem in the directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
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
}

impl Error {
    /// The key path (`group[2].members[1]`), when the error has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Error::Schema { path, .. } | Error::Invalid { path, .. } => Some(path),
            Error::Syntax { .. } => None,
        }
    }
}

/// Every problem found, in the order found. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Error>);

impl fmt::Display for Errors {
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

impl std::error::Error for Errors {}

#[cfg(test)]
mod tests;
