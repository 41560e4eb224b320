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

pub mod clients;
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
    /// Named OAuth clients: built-in entries plus `[[client]]`.
    clients: clients::Catalogue,
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
    /// The user's own `upstream`; beats groups and OUs.
    pub upstream: Option<Route>,
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
    /// `false` when the principal breaks the group's restriction, or reaches the group only
    /// through a nested group that does. Such a membership never *grants* anything through the
    /// group's policy; it may still take access away (see `effective`).
    pub compliant: bool,
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
    /// Index of its `[[group]]` table in the file, for key paths (`group[2].members[1]`).
    pub file_index: usize,
    pub members: Vec<Member>,
    /// For each of `members`, its index in the file's `members = [...]`.
    pub member_index: Vec<usize>,
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

/// A group's membership restriction, as the hosted console's query language writes it
/// (`member.type == 1 && member.customer_id == groupCustomerId()`): for each member kind, whether
/// it may join at all, and if so from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Restriction {
    pub user: Allow,
    pub service: Allow,
    /// Never [`Allow::Any`] on a restricted group: only groups of the organisation may join a
    /// group that restricts its membership (the console refuses outside groups there).
    pub group: Allow,
}

/// Which members of one kind a [`Restriction`] admits. Ordered from strict to open, so "at least
/// as strict" is `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allow {
    /// Not this kind at all.
    No,
    /// Only from the internal domains.
    Internal,
    /// From anywhere.
    Any,
}

impl Allow {
    pub fn as_str(self) -> &'static str {
        match self {
            Allow::No => "no",
            Allow::Internal => "internal",
            Allow::Any => "any",
        }
    }
}

impl Restriction {
    /// No restriction: every kind, from anywhere.
    pub const OPEN: Restriction = Restriction {
        user: Allow::Any,
        service: Allow::Any,
        group: Allow::Any,
    };

    /// Builds a restriction, closing groups to outside domains when anything is restricted.
    pub fn new(user: Allow, service: Allow, group: Allow) -> Restriction {
        let r = Restriction {
            user,
            service,
            group,
        };
        if r.is_open() {
            r
        } else {
            Restriction {
                group: group.min(Allow::Internal),
                ..r
            }
        }
    }

    /// Is this restriction a no-op?
    pub fn is_open(&self) -> bool {
        *self == Restriction::OPEN
    }

    pub fn allows(&self, kind: MemberKind) -> Allow {
        match kind {
            MemberKind::User => self.user,
            MemberKind::Service => self.service,
            MemberKind::Group => self.group,
        }
    }

    /// Does `self` carry at least the restrictions of `parent` (admit nothing `parent` does not)?
    pub fn at_least(&self, parent: &Restriction) -> bool {
        [MemberKind::User, MemberKind::Service, MemberKind::Group]
            .iter()
            .all(|&k| self.allows(k) <= parent.allows(k))
    }

    /// The console's query for this restriction, with names for its numbers: `member.type ==
    /// user || (member.type == group && member.internal)`. `true` for no restriction, `false`
    /// when nothing may join.
    pub fn query(&self) -> String {
        if self.is_open() {
            return "true".to_owned();
        }
        let terms: Vec<String> = [MemberKind::User, MemberKind::Service, MemberKind::Group]
            .iter()
            .filter_map(|&k| match self.allows(k) {
                Allow::No => None,
                Allow::Any => Some(format!("member.type == {}", k.as_str())),
                Allow::Internal => Some(format!(
                    "(member.type == {} && member.internal)",
                    k.as_str()
                )),
            })
            .collect();
        match terms.len() {
            0 => "false".to_owned(),
            1 => terms
                .concat()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .to_owned(),
            _ => terms.join(" || "),
        }
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
    /// Which `[[upstream]]` the mailboxes live on.
    pub upstream: Option<Route>,
    /// Report-only rollout: refusals are recorded as `would_deny` and let through.
    pub enforce: Option<Enforce>,
}

impl PartialSettings {
    pub fn is_empty(&self) -> bool {
        self.pop.is_none()
            && self.imap.is_none()
            && self.imap_clients.is_none()
            && self.password_logins.is_none()
            && self.upstream.is_none()
            && self.enforce.is_none()
    }
}

/// Where a principal's mailboxes live: `upstream = "new-imap"` (that upstream, for logins of
/// its protocol) or `upstream = { imap = "new-imap", pop3 = "new-pop3" }`. Names are checked
/// against `mailgate.toml`'s `[[upstream]]`s when the configuration loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// One upstream; logins of the other protocol keep the listener's.
    Named(Arc<str>),
    PerProtocol {
        imap: Option<Arc<str>>,
        pop3: Option<Arc<str>>,
    },
}

impl Route {
    /// Every upstream name it mentions, with the protocol it is meant for when the table form
    /// says so.
    pub fn names(&self) -> Vec<(&str, Option<crate::proto::Protocol>)> {
        use crate::proto::Protocol;
        match self {
            Route::Named(n) => vec![(n, None)],
            Route::PerProtocol { imap, pop3 } => imap
                .iter()
                .map(|n| (&**n, Some(Protocol::Imap)))
                .chain(pop3.iter().map(|n| (&**n, Some(Protocol::Pop3))))
                .collect(),
        }
    }

    /// The upstream for a login on `protocol`; `protocol_of` says which protocol an upstream
    /// name speaks. `None`: the listener's own upstream.
    pub fn for_protocol(
        &self,
        protocol: crate::proto::Protocol,
        protocol_of: impl Fn(&str) -> Option<crate::proto::Protocol>,
    ) -> Option<&str> {
        use crate::proto::Protocol;
        match self {
            Route::Named(n) => (protocol_of(n) == Some(protocol)).then_some(&**n),
            Route::PerProtocol { imap, pop3 } => match protocol {
                Protocol::Imap => imap.as_deref(),
                Protocol::Pop3 => pop3.as_deref(),
            },
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Named(n) => f.write_str(n),
            Route::PerProtocol { imap, pop3 } => {
                let parts: Vec<String> = [("imap", imap), ("pop3", pop3)]
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
                    .collect();
                f.write_str(&parts.join(", "))
            }
        }
    }
}

/// Whether refusals are enforced, or only recorded (`decision = "would_deny"`) while the login
/// goes ahead: a staged rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforce {
    /// `enforce = true` (the default).
    pub on: bool,
    /// `enforce_from = "2027-01-15"`: report-only until that day, 00:00 UTC, enforced from then.
    pub from: Option<time::Date>,
}

impl Enforce {
    pub const ON: Enforce = Enforce {
        on: true,
        from: None,
    };

    /// Is a refusal enforced at `now`?
    pub fn at(&self, now: std::time::SystemTime) -> bool {
        self.on
            || self.from.is_some_and(|day| {
                let start = day.midnight().assume_utc();
                time::OffsetDateTime::from(now) >= start
            })
    }
}

impl fmt::Display for Enforce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.on, self.from) {
            (true, _) => f.write_str("on"),
            (false, None) => f.write_str("off (report only)"),
            (false, Some(day)) => write!(f, "off (report only) until {day}"),
        }
    }
}

/// The four settings, every one resolved and carrying where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub pop: Sourced<bool>,
    pub imap: Sourced<bool>,
    pub imap_clients: Sourced<ImapClients>,
    pub password_logins: Sourced<bool>,
    /// `None`: nothing on the way sets one; the listener's upstream.
    pub upstream: Option<Sourced<Route>>,
    /// Source `default` when nothing sets it: enforced.
    pub enforce: Sourced<Enforce>,
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
    /// A member breaks the restriction: one that was there before the restriction (or before
    /// this reload), one that arrives through a nested group, or a nested group with fewer
    /// restrictions. The console never removes members itself; neither does mailgate.
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
    /// The nested groups it came through, outermost first; empty for a direct member.
    pub via: Vec<Arc<str>>,
    /// Key path of the direct member entry it arrives through (itself, or `via[0]`):
    /// `group[2].members[1]`. On a reload, an entry that was not a member of the running
    /// directory's group is refused here ("added"); one that was is only reported.
    pub entry: String,
    /// Email of that direct member.
    pub entry_email: Arc<str>,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Kind => "kind",
            Rule::External => "external",
            Rule::Weaker => "weaker_restriction",
        }
    }
}

impl Offender {
    /// What it breaks, as a phrase: `is a service member, which may not join`.
    pub fn rule_text(&self) -> String {
        match self.rule {
            Rule::Kind => format!("is a {}, which may not join", self.kind.as_str()),
            Rule::External => format!(
                "is a {} outside the internal domains, which may join only from inside",
                self.kind.as_str()
            ),
            Rule::Weaker => "is a group that carries fewer restrictions".to_owned(),
        }
    }
}

/// Which part of a restriction a member breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Its kind may not join at all.
    Kind,
    /// Its kind may join only from the internal domains, and its domain is not internal.
    External,
    /// A nested group that carries fewer restrictions than this one (a child group must carry
    /// at least its parent's, or members could join the child that the parent refuses).
    Weaker,
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

    /// The client catalogue: names for OAuth client IDs.
    pub fn clients(&self) -> &clients::Catalogue {
        &self.clients
    }

    /// Direct members that break their group's restriction and were not members of the same
    /// group in `running` (the directory in force): "added", so a reload refuses them, each at
    /// its key path. Ones that were members already are only reported (`mailgate groups`), as
    /// the console never removes a member itself. A group new in this file has every member
    /// added. Offenders arriving through a nested group count against the direct member entry
    /// they come through. Memberships a directory server (LDAP) holds were not added through
    /// mailgate and cannot be refused there: they are only reported, as the console reports
    /// what a sync brings.
    pub fn added_offenders(&self, running: &Directory) -> Vec<Error> {
        let from_ldap = |email: &str| {
            self.principal(email)
                .map(|p| &p.origin)
                .or_else(|| self.group_by_email(email).map(|g| &g.origin))
                .is_some_and(|o| matches!(o, ldap::Origin::Ldap(_)))
        };
        let mut out = Vec::new();
        for g in &self.groups {
            if matches!(g.origin, ldap::Origin::Ldap(_)) {
                continue;
            }
            let before = running.group_by_email(&g.email);
            let mut seen = std::collections::HashSet::new();
            for o in &g.compliance.offenders {
                if !seen.insert(&o.entry) || from_ldap(&o.entry_email) {
                    continue;
                }
                let was_member = before.is_some_and(|b| {
                    b.members
                        .iter()
                        .any(|&m| running.member_email(m) == Some(&*o.entry_email))
                });
                if was_member {
                    continue;
                }
                let what = if o.via.is_empty() {
                    format!("\"{}\" {}", o.email, o.rule_text())
                } else {
                    format!(
                        "through it \"{}\" {} (via {})",
                        o.email,
                        o.rule_text(),
                        o.via.iter().map(|v| &**v).collect::<Vec<_>>().join(" → ")
                    )
                };
                out.push(Error::Invalid {
                    path: o.entry.clone(),
                    message: format!(
                        "\"{}\" was not a member of {} before this reload, and {what}; only \
                         compliant members may be added to a group with a membership restriction \
                         ({})",
                        o.entry_email,
                        g.email,
                        g.restriction.query()
                    ),
                });
            }
        }
        out
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

#[cfg(test)]
mod restriction_tests;
