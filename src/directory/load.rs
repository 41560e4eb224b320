//! Validation and resolution: [`file::Parsed`] in, [`Directory`] or every problem out.
//!
//! Each check pushes onto one error list and carries on, so an operator fixes a file in one pass
//! (linkerd `parse_config`). Paths use the table index as written (`user[3].ou`,
//! `group[2].members[1]`), which is what the operator counts in the file. Items already reported
//! as broken by the file layer are known by name, so nothing refers to them as "unknown".
//!
//! Resolution (inheritance, memberships, compliance) runs only once the references are sound
//! and nesting has no cycle, so every walk below terminates.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::file::{self, GroupFile, ImapClientsFile, OuFile, PrincipalKindFile, SettingsFile};
use super::ldap::Origin;
use super::{
    Compliance, Directory, Error, Errors, Group, GroupId, GroupPolicy, GroupReport, ImapClients,
    Member, MemberKind, Membership, Offender, Ou, OuId, PartialSettings, Principal, PrincipalKind,
    Restriction, Rule, Settings, SharedMailbox, Source, Sourced, domain,
};

/// RFC 5321 section 4.5.3.1.3: a path is at most 256 octets, so an address at most 254.
const MAX_EMAIL_LEN: usize = 254;
/// OAuth client IDs are short opaque strings (Google's are about 75 characters); 256 leaves room
/// while keeping audit records small.
const MAX_CLIENT_ID_LEN: usize = 256;
/// Deeper OU trees than this are a mistake, not an organisation; also bounds path work.
const MAX_OU_DEPTH: usize = 32;

pub(super) fn from_toml(text: &str) -> Result<Directory, Errors> {
    let parsed = file::parse(text);
    if matches!(parsed.errors.first(), Some(Error::Syntax { .. })) {
        return Err(Errors(parsed.errors));
    }
    from_parsed(parsed)
}

/// Validates and resolves an already parsed file (possibly with LDAP entries added, see
/// `super::ldap::merge`).
pub(super) fn from_parsed(mut parsed: file::Parsed) -> Result<Directory, Errors> {
    let mut v = Validator {
        errors: std::mem::take(&mut parsed.errors),
    };
    let directory = v.directory(parsed);
    match directory {
        Some(d) if v.errors.is_empty() => Ok(d),
        _ if !v.errors.is_empty() => Err(Errors(v.errors)),
        // Every early return of `directory` pushes an error first; kept for totality.
        _ => Err(Errors(vec![Error::Invalid {
            path: String::new(),
            message: "directory could not be resolved".to_owned(),
        }])),
    }
}

pub(super) fn allow_all() -> Directory {
    let path: Arc<str> = Arc::from("/");
    let on = |value| Sourced {
        value,
        source: Source::Default,
    };
    let root = Ou {
        path: path.clone(),
        parent: None,
        own: PartialSettings {
            pop: Some(true),
            imap: Some(true),
            imap_clients: Some(ImapClients::All),
            password_logins: Some(true),
        },
        effective: Settings {
            pop: on(true),
            imap: on(true),
            imap_clients: Sourced {
                value: ImapClients::All,
                source: Source::Default,
            },
            password_logins: on(true),
        },
    };
    Directory {
        internal_domains: Vec::new(),
        ous: vec![root],
        ou_by_path: HashMap::from([(path, OuId(0))]),
        principals: Vec::new(),
        principal_by_email: HashMap::new(),
        groups: Vec::new(),
        group_by_email: HashMap::new(),
        default_ou: Some(OuId(0)),
        builtin: true,
        shared: Vec::new(),
    }
}

struct Validator {
    errors: Vec<Error>,
}

/// A group between reading and resolution.
struct Pending {
    file_index: usize,
    email: Arc<str>,
    /// `(index in members = [...], member)`.
    members: Vec<(usize, Member)>,
    restriction: Restriction,
    locked: bool,
    grandfathered: HashSet<String>,
    policy: Option<GroupPolicy>,
}

impl Validator {
    fn invalid(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Error::Invalid {
            path: path.into(),
            message: message.into(),
        });
    }

    fn directory(&mut self, p: file::Parsed) -> Option<Directory> {
        let internal_domains = self.internal_domains(&p.internal_domains);
        let broken_ous: HashSet<&str> = p.broken_ous.iter().map(String::as_str).collect();
        let (ous, ou_by_path, skipped_ous) = self.ous(&p.ous, &broken_ous);
        let broken_principals: HashSet<&str> =
            p.broken_principals.iter().map(String::as_str).collect();

        let mut principals = Vec::new();
        let mut principal_by_email: HashMap<Arc<str>, usize> = HashMap::new();
        let mut user_index: HashMap<Arc<str>, usize> = HashMap::new();
        for (i, u) in &p.users {
            let at = format!("user[{i}]");
            let Some(email) = self.email(&format!("{at}.email"), &u.email) else {
                continue;
            };
            if let Some(first) = user_index.get(&email) {
                self.invalid(
                    format!("{at}.email"),
                    format!("duplicate user \"{email}\" (also user[{first}])"),
                );
                continue;
            }
            user_index.insert(email.clone(), *i);
            for (key, value) in [("pop", u.pop), ("imap", u.imap)] {
                if value == Some(true) {
                    self.invalid(
                        format!("{at}.{key}"),
                        "a user switch can only turn access off (false); remove the key to \
                         take the value from the OU and groups",
                    );
                }
            }
            let ou = match ou_by_path.get(u.ou.as_str()) {
                Some(&id) => id,
                None => {
                    if !broken_ous.contains(u.ou.as_str()) && !skipped_ous.contains(&u.ou) {
                        self.invalid(format!("{at}.ou"), format!("unknown OU \"{}\"", u.ou));
                    }
                    continue;
                }
            };
            principal_by_email.insert(email.clone(), principals.len());
            principals.push(Principal {
                email,
                kind: match u.kind {
                    PrincipalKindFile::User => PrincipalKind::User,
                    PrincipalKindFile::Service => PrincipalKind::Service,
                },
                ou,
                suspended: u.suspended,
                pop_off: u.pop == Some(false),
                imap_off: u.imap == Some(false),
                memberships: Vec::new(),
                origin: Origin::File,
                // Replaced in `resolve` once memberships are known.
                effective: ous.get(ou.0)?.effective.clone(),
            });
        }

        let groups = self.groups(
            &p.groups,
            &internal_domains,
            &user_index,
            &principal_by_email,
            &principals,
            &broken_principals,
        );
        self.cycles(&groups);
        let shared = self.shared_mailboxes(&p.shared_mailboxes, &principal_by_email, &groups);
        if !self.errors.is_empty() {
            return None;
        }
        let mut directory = self.resolve(
            internal_domains,
            ous,
            ou_by_path,
            principals,
            principal_by_email,
            groups,
        )?;
        directory.shared = shared;
        Some(directory)
    }

    /// `[[shared_mailbox]]`: addresses unique and no user's own (a login to it would be
    /// ambiguous), assignments name known users or groups.
    fn shared_mailboxes(
        &mut self,
        files: &[(usize, file::SharedMailboxFile)],
        principal_by_email: &HashMap<Arc<str>, usize>,
        groups: &[Pending],
    ) -> Vec<SharedMailbox> {
        let mut out: Vec<SharedMailbox> = Vec::new();
        for (i, m) in files {
            let at = format!("shared_mailbox[{i}]");
            let Some(address) = self.email(&format!("{at}.address"), &m.address) else {
                continue;
            };
            if out.iter().any(|o| o.address == address) {
                self.invalid(
                    format!("{at}.address"),
                    format!("duplicate shared mailbox \"{address}\""),
                );
            }
            if principal_by_email.contains_key(&address) {
                self.invalid(
                    format!("{at}.address"),
                    format!("\"{address}\" is also a [[user]]; a shared mailbox is no user"),
                );
            }
            if m.grant.is_empty() {
                self.invalid(format!("{at}.grant"), "must name a grant");
            }
            let mut assigned = Vec::new();
            for (j, raw) in m.assigned.iter().enumerate() {
                let email = raw.to_lowercase();
                if let Some(&p) = principal_by_email.get(email.as_str()) {
                    assigned.push(Member::Principal(p));
                } else if let Some(g) = groups.iter().position(|g| *g.email == *email) {
                    assigned.push(Member::Group(GroupId(g)));
                } else {
                    self.invalid(
                        format!("{at}.assigned[{j}]"),
                        format!("unknown user or group {raw:?}"),
                    );
                }
            }
            let upstreams: Vec<Arc<str>> = m
                .upstream
                .clone()
                .into_vec()
                .into_iter()
                .map(Arc::from)
                .collect();
            if upstreams.is_empty() {
                self.invalid(format!("{at}.upstream"), "must name an [[upstream]]");
            }
            out.push(SharedMailbox {
                address,
                upstreams,
                grant: Arc::from(m.grant.as_str()),
                assigned,
                protocols: m.protocols.clone(),
            });
        }
        out
    }

    fn internal_domains(&mut self, domains: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, d) in domains.iter().enumerate() {
            let d = d.to_lowercase();
            if d.is_empty() || d.contains('@') || d.chars().any(|c| c.is_whitespace()) {
                self.invalid(
                    format!("internal_domains[{i}]"),
                    format!("{d:?} is not a domain name"),
                );
            } else if out.contains(&d) {
                self.invalid(format!("internal_domains[{i}]"), format!("duplicate {d:?}"));
            } else {
                out.push(d);
            }
        }
        out
    }

    /// Validates and orders the OUs (parents first) and resolves their inheritance. Returns the
    /// OUs, the path index, and the paths left out because of an error (so users in them are
    /// not reported again).
    fn ous(
        &mut self,
        files: &[(usize, OuFile)],
        broken: &HashSet<&str>,
    ) -> (Vec<Ou>, HashMap<Arc<str>, OuId>, HashSet<String>) {
        let mut skipped = HashSet::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut valid: Vec<(usize, &OuFile, PartialSettings, usize)> = Vec::new();
        for (i, ou) in files {
            let at = format!("ou[{i}]");
            let depth = match ou_depth(&ou.path) {
                Ok(d) => d,
                Err(why) => {
                    self.invalid(format!("{at}.path"), format!("{:?} {why}", ou.path));
                    skipped.insert(ou.path.clone());
                    continue;
                }
            };
            if let Some(first) = seen.insert(&ou.path, *i) {
                self.invalid(
                    format!("{at}.path"),
                    format!("duplicate OU \"{}\" (also ou[{first}])", ou.path),
                );
                continue;
            }
            let own = self.settings(&at, ou.settings());
            if depth == 0 {
                for (key, set) in [
                    ("pop", own.pop.is_some()),
                    ("imap", own.imap.is_some()),
                    ("imap_clients", own.imap_clients.is_some()),
                    ("password_logins", own.password_logins.is_some()),
                ] {
                    // A nested imap_clients error was reported already; do not add a second.
                    let reported = key == "imap_clients" && ou.imap_clients.is_some();
                    if !set && !reported {
                        self.invalid(
                            format!("{at}.{key}"),
                            "the root OU must set every setting: there is nothing above it to \
                             inherit from",
                        );
                    }
                }
            }
            valid.push((*i, ou, own, depth));
        }
        if !seen.contains_key("/") && !broken.contains("/") {
            self.invalid(
                "ou",
                "no root OU: add an [[ou]] with path = \"/\" that sets pop, imap, imap_clients \
                 and password_logins",
            );
        }
        // Parents before children, so each child finds its parent's resolved settings.
        valid.sort_by_key(|(i, _, _, depth)| (*depth, *i));
        let mut ous: Vec<Ou> = Vec::new();
        let mut by_path: HashMap<Arc<str>, OuId> = HashMap::new();
        for (i, ou, own, _) in valid {
            let path: Arc<str> = Arc::from(ou.path.as_str());
            let source = Source::Ou(path.clone());
            let sourced = |value: Option<bool>| {
                value.map(|value| Sourced {
                    value,
                    source: source.clone(),
                })
            };
            let (parent, effective) = match parent_path(&ou.path) {
                None => {
                    // Root: unset values were reported above; fill them so resolution can go on
                    // collecting errors. The directory is rejected anyway.
                    let off = |v: Option<bool>| Sourced {
                        value: v.unwrap_or(false),
                        source: source.clone(),
                    };
                    let effective = Settings {
                        pop: off(own.pop),
                        imap: off(own.imap),
                        imap_clients: Sourced {
                            value: own.imap_clients.clone().unwrap_or(ImapClients::All),
                            source: source.clone(),
                        },
                        password_logins: off(own.password_logins),
                    };
                    (None, effective)
                }
                Some(parent) => {
                    let Some(&pid) = by_path.get(parent) else {
                        if !broken.contains(parent) && !skipped.contains(parent) {
                            self.invalid(
                                format!("ou[{i}].path"),
                                format!(
                                    "parent OU \"{parent}\" is not declared; add an [[ou]] with \
                                     path = \"{parent}\""
                                ),
                            );
                        }
                        skipped.insert(ou.path.clone());
                        continue;
                    };
                    let Some(up) = ous.get(pid.0) else {
                        continue;
                    };
                    let up = &up.effective;
                    let effective = Settings {
                        pop: sourced(own.pop).unwrap_or_else(|| up.pop.clone()),
                        imap: sourced(own.imap).unwrap_or_else(|| up.imap.clone()),
                        imap_clients: match &own.imap_clients {
                            Some(value) => Sourced {
                                value: value.clone(),
                                source: source.clone(),
                            },
                            None => up.imap_clients.clone(),
                        },
                        password_logins: sourced(own.password_logins)
                            .unwrap_or_else(|| up.password_logins.clone()),
                    };
                    (Some(pid), effective)
                }
            };
            by_path.insert(path.clone(), OuId(ous.len()));
            ous.push(Ou {
                path,
                parent,
                own,
                effective,
            });
        }
        (ous, by_path, skipped)
    }

    /// Checks an OU's or group policy's settings; `at` is the table's path.
    fn settings(&mut self, at: &str, s: SettingsFile) -> PartialSettings {
        let imap_clients = match (s.imap_clients, s.imap_allowed_client_ids) {
            (None, None) => None,
            (Some(ImapClientsFile::All), None) => Some(ImapClients::All),
            (Some(ImapClientsFile::All), Some(_)) => {
                self.invalid(
                    format!("{at}.imap_allowed_client_ids"),
                    "only meaningful with imap_clients = \"allowlist\"",
                );
                None
            }
            (None, Some(_)) => {
                self.invalid(
                    format!("{at}.imap_allowed_client_ids"),
                    "needs imap_clients = \"allowlist\" in the same table (the list and the mode \
                     are one setting, inherited together)",
                );
                None
            }
            (Some(ImapClientsFile::Allowlist), None) => {
                self.invalid(
                    format!("{at}.imap_clients"),
                    "\"allowlist\" needs imap_allowed_client_ids, the OAuth client IDs allowed \
                     to connect (an empty list allows none)",
                );
                None
            }
            (Some(ImapClientsFile::Allowlist), Some(ids)) => {
                let mut out: Vec<String> = Vec::new();
                for (j, id) in ids.into_iter().enumerate() {
                    let ok = !id.is_empty()
                        && id.len() <= MAX_CLIENT_ID_LEN
                        && !id.chars().any(|c| c.is_whitespace() || c.is_control());
                    if !ok {
                        self.invalid(
                            format!("{at}.imap_allowed_client_ids[{j}]"),
                            format!(
                                "{id:?} is not a client ID: 1 to {MAX_CLIENT_ID_LEN} characters, \
                                 no spaces"
                            ),
                        );
                    } else if !out.contains(&id) {
                        out.push(id);
                    }
                }
                Some(ImapClients::Allowlist(out.into()))
            }
        };
        PartialSettings {
            pop: s.pop,
            imap: s.imap,
            imap_clients,
            password_logins: s.password_logins,
        }
    }

    /// Lowercased email, or `None` after reporting why it is not one.
    fn email(&mut self, path: &str, raw: &str) -> Option<Arc<str>> {
        let email = raw.to_lowercase();
        let ok = email.len() <= MAX_EMAIL_LEN
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(email.split_once('@'), Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        if ok {
            Some(Arc::from(email))
        } else {
            self.invalid(path, format!("{raw:?} is not an email address"));
            None
        }
    }

    fn groups(
        &mut self,
        files: &[(usize, GroupFile)],
        internal: &[String],
        users: &HashMap<Arc<str>, usize>,
        principal_by_email: &HashMap<Arc<str>, usize>,
        principals: &[Principal],
        broken: &HashSet<&str>,
    ) -> Vec<Pending> {
        // First pass: names, so members may refer to groups defined further down.
        let mut by_email: HashMap<Arc<str>, GroupId> = HashMap::new();
        let mut file_index_of: HashMap<Arc<str>, usize> = HashMap::new();
        let mut accepted: Vec<(usize, &GroupFile, Arc<str>)> = Vec::new();
        for (i, g) in files {
            let at = format!("group[{i}].email");
            let Some(email) = self.email(&at, &g.email) else {
                continue;
            };
            if let Some(first) = file_index_of.get(&email) {
                self.invalid(
                    at,
                    format!("duplicate group \"{email}\" (also group[{first}])"),
                );
                continue;
            }
            if let Some(user) = users.get(&email) {
                self.invalid(at, format!("\"{email}\" is already a user (user[{user}])"));
                continue;
            }
            file_index_of.insert(email.clone(), *i);
            by_email.insert(email.clone(), GroupId(accepted.len()));
            accepted.push((*i, g, email));
        }

        let mut priorities: HashMap<u32, Arc<str>> = HashMap::new();
        let mut out = Vec::new();
        for (i, g, email) in accepted {
            let at = format!("group[{i}]");
            let restriction = Restriction {
                allowed_kinds: g.allowed_member_kinds.clone().unwrap_or_else(|| {
                    vec![MemberKind::User, MemberKind::Service, MemberKind::Group]
                }),
                internal_only: g.internal_only,
            };
            let mut members = Vec::new();
            let mut listed: HashMap<String, usize> = HashMap::new();
            for (j, raw) in g.members.iter().enumerate() {
                let path = format!("{at}.members[{j}]");
                let m = raw.to_lowercase();
                if let Some(first) = listed.insert(m.clone(), j) {
                    self.invalid(
                        path,
                        format!("\"{m}\" is listed twice (also members[{first}])"),
                    );
                    continue;
                }
                if *m == *email {
                    self.invalid(path, "a group cannot contain itself");
                    continue;
                }
                let (member, kind) = if let Some(&p) = principal_by_email.get(m.as_str()) {
                    let kind = principals
                        .get(p)
                        .map_or(MemberKind::User, |p| p.kind.member_kind());
                    (Member::Principal(p), kind)
                } else if let Some(&h) = by_email.get(m.as_str()) {
                    (Member::Group(h), MemberKind::Group)
                } else {
                    // A user left out for an error of its own (bad OU, duplicate) was reported
                    // there; so was a table that did not deserialize.
                    if !broken.contains(m.as_str()) && !users.contains_key(m.as_str()) {
                        self.invalid(
                            path,
                            format!(
                                "unknown member \"{m}\": no [[user]] or [[group]] has this email"
                            ),
                        );
                    }
                    continue;
                };
                match breaks(&restriction, kind, &m, internal) {
                    Some(Rule::Kind) => self.invalid(
                        path,
                        format!(
                            "\"{m}\" is a {} member, but this group allows only {} members \
                             (allowed_member_kinds)",
                            kind.as_str(),
                            kinds_list(&restriction.allowed_kinds)
                        ),
                    ),
                    Some(Rule::External) => self.invalid(
                        path,
                        format!(
                            "\"{m}\" is outside the internal domains ({}), but this group is \
                             internal_only",
                            internal.join(", ")
                        ),
                    ),
                    None => members.push((j, member)),
                }
            }
            let policy = g.policy.as_ref().map(|p| {
                let settings = self.settings(&format!("{at}.policy"), p.settings());
                if let Some(other) = priorities.get(&p.priority) {
                    self.invalid(
                        format!("{at}.policy.priority"),
                        format!(
                            "priority {} is already used by group \"{other}\"; priorities must \
                             be unique so the winning policy is never ambiguous",
                            p.priority
                        ),
                    );
                } else {
                    priorities.insert(p.priority, email.clone());
                }
                GroupPolicy {
                    priority: p.priority,
                    settings,
                }
            });
            if !g.locked && !g.grandfathered.is_empty() {
                self.invalid(
                    format!("{at}.grandfathered"),
                    "only meaningful with locked = true",
                );
            }
            out.push(Pending {
                file_index: i,
                email,
                members,
                restriction,
                locked: g.locked,
                grandfathered: g.grandfathered.iter().map(|e| e.to_lowercase()).collect(),
                policy,
            });
        }
        out
    }

    /// Reports every nesting cycle once, at the member entry that closes it. Iterative, so a
    /// long chain of nested groups cannot overflow the stack.
    fn cycles(&mut self, groups: &[Pending]) {
        const WHITE: u8 = 0;
        const GREY: u8 = 1;
        const BLACK: u8 = 2;
        let mut color = vec![WHITE; groups.len()];
        for start in 0..groups.len() {
            if color[start] != WHITE {
                continue;
            }
            color[start] = GREY;
            // (group, next member position to look at)
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            while let Some(top) = stack.last_mut() {
                let g = top.0;
                let Some(&(j, member)) = groups[g].members.get(top.1) else {
                    color[g] = BLACK;
                    stack.pop();
                    continue;
                };
                top.1 += 1;
                let Member::Group(GroupId(child)) = member else {
                    continue;
                };
                match color.get(child).copied() {
                    Some(WHITE) => {
                        color[child] = GREY;
                        stack.push((child, 0));
                    }
                    Some(GREY) => {
                        let from = stack.iter().position(|&(x, _)| x == child).unwrap_or(0);
                        let mut names: Vec<&str> = stack[from..]
                            .iter()
                            .map(|&(x, _)| &*groups[x].email)
                            .collect();
                        names.push(&groups[child].email);
                        self.invalid(
                            format!("group[{}].members[{j}]", groups[g].file_index),
                            format!("nesting cycle: {}", names.join(" → ")),
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    /// Memberships, compliance and effective settings. Only called on acyclic, sound input.
    fn resolve(
        &mut self,
        internal_domains: Vec<String>,
        ous: Vec<Ou>,
        ou_by_path: HashMap<Arc<str>, OuId>,
        mut principals: Vec<Principal>,
        principal_by_email: HashMap<Arc<str>, usize>,
        pending: Vec<Pending>,
    ) -> Option<Directory> {
        let mut reports = Vec::with_capacity(pending.len());
        for (g, group) in pending.iter().enumerate() {
            let mut offenders = Vec::new();
            // Nested group reached -> the group it was found in (`None`: a direct member of `g`).
            // Paths are rebuilt from these links only when recorded, so a deep chain costs
            // linear work per group instead of copying a growing path at every step.
            let mut found_in: HashMap<usize, Option<usize>> = HashMap::from([(g, None)]);
            let mut seen_principals = HashSet::new();
            let mut queue: VecDeque<(Member, Option<usize>)> =
                group.members.iter().map(|&(_, m)| (m, None)).collect();
            // Breadth first, so each membership and offender is recorded by its shortest path.
            while let Some((member, container)) = queue.pop_front() {
                let (email, kind) = match member {
                    Member::Principal(p) => {
                        if !seen_principals.insert(p) {
                            continue;
                        }
                        let principal = principals.get_mut(p)?;
                        principal.memberships.push(Membership {
                            group: GroupId(g),
                            via: path_to(&found_in, container)
                                .into_iter()
                                .map(GroupId)
                                .collect(),
                        });
                        (principal.email.clone(), principal.kind.member_kind())
                    }
                    Member::Group(GroupId(h)) => {
                        if found_in.contains_key(&h) {
                            continue;
                        }
                        found_in.insert(h, container);
                        let inner = pending.get(h)?;
                        queue.extend(inner.members.iter().map(|&(_, m)| (m, Some(h))));
                        (inner.email.clone(), MemberKind::Group)
                    }
                };
                // Direct members were checked at load and rejected there.
                if container.is_none() {
                    continue;
                }
                if let Some(rule) = breaks(&group.restriction, kind, &email, &internal_domains) {
                    offenders.push(Offender {
                        email,
                        kind,
                        rule,
                        via: path_to(&found_in, container)
                            .into_iter()
                            .filter_map(|h| pending.get(h).map(|p| p.email.clone()))
                            .collect(),
                    });
                }
            }
            if group.locked {
                for o in offenders
                    .iter()
                    .filter(|o| !group.grandfathered.contains(&*o.email))
                {
                    self.invalid(
                        format!("group[{}].locked", group.file_index),
                        format!(
                            "\"{}\" (via {}) breaks the membership restriction and is not in \
                             grandfathered; a locked group accepts no new non-compliant members",
                            o.email,
                            join_arcs(&o.via)
                        ),
                    );
                }
            }
            let state = match (offenders.is_empty(), group.locked) {
                (true, _) => Compliance::Compliant,
                (false, false) => Compliance::NonCompliant,
                (false, true) => Compliance::NonCompliantLocked,
            };
            reports.push(GroupReport { state, offenders });
        }

        let groups: Vec<Group> = pending
            .into_iter()
            .zip(reports)
            .map(|(p, compliance)| Group {
                email: p.email,
                members: p.members.into_iter().map(|(_, m)| m).collect(),
                restriction: p.restriction,
                locked: p.locked,
                policy: p.policy,
                compliance,
                origin: Origin::File,
            })
            .collect();

        for principal in &mut principals {
            let ou = ous.get(principal.ou.0)?;
            principal.effective = effective(principal, &ou.effective, &groups);
            principal
                .memberships
                .sort_by(|a, b| group_email(&groups, a.group).cmp(group_email(&groups, b.group)));
        }
        let group_by_email = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.email.clone(), GroupId(i)))
            .collect();
        Some(Directory {
            internal_domains,
            ous,
            ou_by_path,
            principals,
            principal_by_email,
            groups,
            group_by_email,
            default_ou: None,
            builtin: false,
            shared: Vec::new(),
        })
    }
}

/// docs/policy.md order: user switch (off only), then the group policy with the lowest priority
/// number that sets the value, then the OU's effective value.
fn effective(principal: &Principal, ou: &Settings, groups: &[Group]) -> Settings {
    let mut policies: Vec<(&Group, &GroupPolicy)> = principal
        .memberships
        .iter()
        .filter_map(|m| groups.get(m.group.0))
        .filter_map(|g| g.policy.as_ref().map(|p| (g, p)))
        .collect();
    policies.sort_by_key(|(_, p)| p.priority);
    fn pick<T: Clone>(
        policies: &[(&Group, &GroupPolicy)],
        get: impl Fn(&PartialSettings) -> Option<&T>,
        fallback: &Sourced<T>,
    ) -> Sourced<T> {
        policies
            .iter()
            .find_map(|(g, p)| {
                get(&p.settings).map(|v| Sourced {
                    value: v.clone(),
                    source: Source::Group(g.email.clone()),
                })
            })
            .unwrap_or_else(|| fallback.clone())
    }
    let off = Sourced {
        value: false,
        source: Source::User,
    };
    Settings {
        pop: if principal.pop_off {
            off.clone()
        } else {
            pick(&policies, |s| s.pop.as_ref(), &ou.pop)
        },
        imap: if principal.imap_off {
            off
        } else {
            pick(&policies, |s| s.imap.as_ref(), &ou.imap)
        },
        imap_clients: pick(&policies, |s| s.imap_clients.as_ref(), &ou.imap_clients),
        password_logins: pick(
            &policies,
            |s| s.password_logins.as_ref(),
            &ou.password_logins,
        ),
    }
}

/// Which rule, if any, a member of `kind` with `email` breaks. Kind is checked first: it is the
/// more basic of the two.
fn breaks(r: &Restriction, kind: MemberKind, email: &str, internal: &[String]) -> Option<Rule> {
    if !r.allowed_kinds.contains(&kind) {
        Some(Rule::Kind)
    } else if r.internal_only && !internal.iter().any(|d| d == domain(email)) {
        Some(Rule::External)
    } else {
        None
    }
}

/// The nested groups from the outer group down to `container`, outermost first.
fn path_to(found_in: &HashMap<usize, Option<usize>>, container: Option<usize>) -> Vec<usize> {
    let mut path = Vec::new();
    let mut at = container;
    while let Some(h) = at {
        path.push(h);
        // Every group on the queue was entered in `found_in` first; the outer group maps to
        // `None`, so the walk ends. The length bound guards the invariant without a panic.
        at = found_in.get(&h).copied().flatten();
        if path.len() > found_in.len() {
            break;
        }
    }
    path.reverse();
    path
}

fn group_email(groups: &[Group], id: GroupId) -> &str {
    groups.get(id.0).map_or("", |g| &g.email)
}

fn kinds_list(kinds: &[MemberKind]) -> String {
    if kinds.is_empty() {
        return "no".to_owned();
    }
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn join_arcs(items: &[Arc<str>]) -> String {
    items.iter().map(|s| &**s).collect::<Vec<_>>().join(" → ")
}

/// Depth of a well-formed OU path (`/` is 0, `/Sales` 1), or why it is not one.
fn ou_depth(path: &str) -> Result<usize, &'static str> {
    if path == "/" {
        return Ok(0);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("is not an OU path: it must start with \"/\"");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err("is not an OU path: empty segment or trailing \"/\"");
    }
    if path.chars().any(char::is_control) {
        return Err("is not an OU path: control character");
    }
    if segments.len() > MAX_OU_DEPTH {
        return Err("is nested deeper than 32 levels");
    }
    Ok(segments.len())
}

/// `/Sales/Interns` → `/Sales`, `/Sales` → `/`, `/` → none.
fn parent_path(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => path.get(..i),
        None => None,
    }
}
