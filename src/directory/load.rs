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

use super::clients::Catalogue;
use super::file::{
    self, ClientFile, GroupFile, ImapClientsFile, OuFile, PrincipalKindFile, RouteFile,
    SettingsFile,
};
use super::ldap::Origin;
use super::{
    Allow, Compliance, Directory, Enforce, Error, Errors, Group, GroupId, GroupPolicy, GroupReport,
    ImapClients, Member, MemberKind, Membership, Offender, Ou, OuId, PartialSettings, Principal,
    PrincipalKind, Restriction, Route, Rule, Settings, SharedMailbox, Source, Sourced, domain,
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
        clients: Catalogue::builtin(),
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
            upstream: None,
            enforce: None,
        },
        effective: Settings {
            pop: on(true),
            imap: on(true),
            imap_clients: Sourced {
                value: ImapClients::All,
                source: Source::Default,
            },
            password_logins: on(true),
            upstream: None,
            enforce: Sourced {
                value: Enforce::ON,
                source: Source::Default,
            },
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
        clients: Catalogue::builtin(),
        shared: Vec::new(),
    }
}

struct Validator {
    errors: Vec<Error>,
    /// Built-in entries plus `[[client]]`; read when allowlists name a client.
    clients: Catalogue,
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
        self.clients(&p.clients);
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
                upstream: u
                    .upstream
                    .as_ref()
                    .and_then(|r| self.route(&format!("{at}.upstream"), r)),
                memberships: Vec::new(),
                origin: Origin::File,
                // Replaced in `resolve` once memberships are known.
                effective: ous.get(ou.0)?.effective.clone(),
            });
        }

        let groups = self.groups(
            &p.groups,
            &user_index,
            &principal_by_email,
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
                        upstream: own.upstream.clone().map(|value| Sourced {
                            value,
                            source: source.clone(),
                        }),
                        enforce: Sourced {
                            value: own.enforce.unwrap_or(Enforce::ON),
                            source: match own.enforce {
                                Some(_) => source.clone(),
                                None => Source::Default,
                            },
                        },
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
                        upstream: match &own.upstream {
                            Some(value) => Some(Sourced {
                                value: value.clone(),
                                source: source.clone(),
                            }),
                            None => up.upstream.clone(),
                        },
                        enforce: match own.enforce {
                            Some(value) => Sourced {
                                value,
                                source: source.clone(),
                            },
                            None => up.enforce.clone(),
                        },
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
                for (j, entry) in ids.into_iter().enumerate() {
                    // A catalogue name stands for its IDs; `id:` forces a raw ID that happens
                    // to be spelt like a name.
                    let id = match entry.strip_prefix("id:") {
                        Some(raw) => raw.to_owned(),
                        None => match self.clients.by_name(&entry) {
                            Some(client) => {
                                for id in &client.ids {
                                    if !out.contains(id) {
                                        out.push(id.clone());
                                    }
                                }
                                continue;
                            }
                            None => entry,
                        },
                    };
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
        let upstream = s
            .upstream
            .as_ref()
            .and_then(|r| self.route(&format!("{at}.upstream"), r));
        let enforce = match (s.enforce, s.enforce_from) {
            (None, None) => None,
            (Some(true), None) => Some(Enforce::ON),
            (Some(false), None) => Some(Enforce {
                on: false,
                from: None,
            }),
            (Some(true), Some(_)) => {
                self.invalid(
                    format!("{at}.enforce_from"),
                    "only meaningful with enforce = false (report only until that day)",
                );
                None
            }
            (None, Some(_)) => {
                self.invalid(
                    format!("{at}.enforce_from"),
                    "needs enforce = false in the same table: the two are one setting, \
                     inherited together",
                );
                None
            }
            (Some(false), Some(day)) => {
                let format = time::macros::format_description!("[year]-[month]-[day]");
                match time::Date::parse(&day, format) {
                    Ok(day) => Some(Enforce {
                        on: false,
                        from: Some(day),
                    }),
                    Err(_) => {
                        self.invalid(
                            format!("{at}.enforce_from"),
                            format!("{day:?} is not a date: write it as \"2027-01-15\""),
                        );
                        None
                    }
                }
            }
        };
        PartialSettings {
            pop: s.pop,
            imap: s.imap,
            imap_clients,
            password_logins: s.password_logins,
            upstream,
            enforce,
        }
    }

    /// `upstream = ...`. Whether the names exist is checked against `mailgate.toml` when the
    /// configuration loads; here only the shape.
    fn route(&mut self, at: &str, r: &RouteFile) -> Option<Route> {
        let name = |v: &str| {
            let ok = !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c.is_control());
            ok.then(|| Arc::<str>::from(v))
        };
        match r {
            RouteFile::Named(n) => match name(n) {
                Some(n) => Some(Route::Named(n)),
                None => {
                    self.invalid(at, format!("{n:?} is not an upstream name"));
                    None
                }
            },
            RouteFile::PerProtocol(t) => {
                let mut bad = false;
                let mut slot = |key: &str, v: &Option<String>| match v.as_deref().map(name) {
                    None => None,
                    Some(Some(n)) => Some(n),
                    Some(None) => {
                        bad = true;
                        self.invalid(format!("{at}.{key}"), "not an upstream name");
                        None
                    }
                };
                let imap = slot("imap", &t.imap);
                let pop3 = slot("pop3", &t.pop3);
                if bad {
                    return None;
                }
                if imap.is_none() && pop3.is_none() {
                    self.invalid(at, "names no upstream: set imap, pop3 or both");
                    return None;
                }
                Some(Route::PerProtocol { imap, pop3 })
            }
        }
    }

    /// `[[client]]`: names for client IDs, added to the built-in catalogue.
    fn clients(&mut self, files: &[(usize, ClientFile)]) {
        let mut ids_seen: HashMap<String, String> = HashMap::new();
        for c in self.clients.clients() {
            for id in &c.ids {
                ids_seen.insert(id.clone(), c.name.to_string());
            }
        }
        for (i, c) in files {
            let at = format!("client[{i}]");
            let ok = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
            if !ok {
                self.invalid(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a client name: 1 to 64 of a-z, 0-9 and -",
                        c.name
                    ),
                );
                continue;
            }
            let mut ids = Vec::new();
            for (j, id) in c.ids.iter().enumerate() {
                let valid = !id.is_empty()
                    && id.len() <= MAX_CLIENT_ID_LEN
                    && !id.chars().any(|ch| ch.is_whitespace() || ch.is_control());
                if !valid {
                    self.invalid(
                        format!("{at}.ids[{j}]"),
                        format!(
                            "{id:?} is not a client ID: 1 to {MAX_CLIENT_ID_LEN} characters, no \
                             spaces"
                        ),
                    );
                } else if let Some(other) = ids_seen.get(id).filter(|o| **o != c.name) {
                    self.invalid(
                        format!("{at}.ids[{j}]"),
                        format!("{id:?} is already the client \"{other}\""),
                    );
                } else {
                    ids_seen.insert(id.clone(), c.name.clone());
                    ids.push(id.clone());
                }
            }
            let description = c.description.as_deref().unwrap_or("from directory.toml");
            self.clients.add(&c.name, ids, description, false);
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
        users: &HashMap<Arc<str>, usize>,
        principal_by_email: &HashMap<Arc<str>, usize>,
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
            let restriction = match (&g.member_restriction, &g.allowed_member_kinds) {
                (Some(r), kinds) => {
                    if kinds.is_some() || g.internal_only {
                        self.invalid(
                            format!("{at}.member_restriction"),
                            "replaces allowed_member_kinds and internal_only; use one or the \
                             other",
                        );
                    }
                    Restriction::new(
                        r.user.unwrap_or(Allow::No),
                        r.service.unwrap_or(Allow::No),
                        r.group.unwrap_or(Allow::No),
                    )
                }
                (None, kinds) => {
                    let origin = if g.internal_only {
                        Allow::Internal
                    } else {
                        Allow::Any
                    };
                    let allow = |k: MemberKind| match kinds {
                        Some(list) if !list.contains(&k) => Allow::No,
                        _ => origin,
                    };
                    Restriction::new(
                        allow(MemberKind::User),
                        allow(MemberKind::Service),
                        allow(MemberKind::Group),
                    )
                }
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
                // A member that breaks the restriction is kept: whether it was *added* is judged
                // against the running directory on reload (`Directory::added_offenders`).
                let member = if let Some(&p) = principal_by_email.get(m.as_str()) {
                    Member::Principal(p)
                } else if let Some(&h) = by_email.get(m.as_str()) {
                    Member::Group(h)
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
                members.push((j, member));
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
        // Email and kind of each principal, read while memberships are written below.
        let facts: Vec<(Arc<str>, MemberKind)> = principals
            .iter()
            .map(|p| (p.email.clone(), p.kind.member_kind()))
            .collect();
        for (g, group) in pending.iter().enumerate() {
            let mut offenders = Vec::new();
            let r = &group.restriction;
            // What `member` breaks of this group's restriction, wherever it sits below it.
            let offends = |member: Member| -> Option<(Arc<str>, MemberKind, Rule)> {
                match member {
                    Member::Principal(p) => {
                        let (email, kind) = facts.get(p)?;
                        breaks(r, *kind, email, &internal_domains, None)
                            .map(|rule| (email.clone(), *kind, rule))
                    }
                    Member::Group(GroupId(h)) => {
                        let inner = pending.get(h)?;
                        breaks(
                            r,
                            MemberKind::Group,
                            &inner.email,
                            &internal_domains,
                            Some(&inner.restriction),
                        )
                        .map(|rule| (inner.email.clone(), MemberKind::Group, rule))
                    }
                }
            };
            // Nested group reached -> the group it was found in (`None`: a direct member of `g`).
            // Paths are rebuilt from these links only when recorded, so a deep chain costs
            // linear work per group instead of copying a growing path at every step.
            let mut found_in: HashMap<usize, Option<usize>> = HashMap::from([(g, None)]);
            let mut seen_principals = HashSet::new();
            // (member, the group it sits in, index of the direct member entry it arrives by)
            let mut queue: VecDeque<(Member, Option<usize>, usize)> =
                group.members.iter().map(|&(j, m)| (m, None, j)).collect();
            // Breadth first, so each membership and offender is recorded by its shortest path.
            while let Some((member, container, entry)) = queue.pop_front() {
                match member {
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
                            // Settled below, once every path is known.
                            compliant: true,
                        });
                    }
                    Member::Group(GroupId(h)) => {
                        if found_in.contains_key(&h) {
                            continue;
                        }
                        found_in.insert(h, container);
                        let inner = pending.get(h)?;
                        queue.extend(inner.members.iter().map(|&(_, m)| (m, Some(h), entry)));
                    }
                }
                if let Some((email, kind, rule)) = offends(member) {
                    let via: Vec<Arc<str>> = path_to(&found_in, container)
                        .into_iter()
                        .filter_map(|h| pending.get(h).map(|p| p.email.clone()))
                        .collect();
                    let entry_email = via.first().cloned().unwrap_or_else(|| email.clone());
                    offenders.push(Offender {
                        email,
                        kind,
                        rule,
                        via,
                        entry: format!("group[{}].members[{entry}]", group.file_index),
                        entry_email,
                    });
                }
            }
            // A membership is compliant when some path reaches the principal through nested
            // groups that each comply, and the principal complies itself: walk again without
            // entering a non-compliant nested group.
            let mut compliant = HashSet::new();
            if !r.is_open() {
                let mut entered = HashSet::from([g]);
                let mut queue: VecDeque<Member> = group.members.iter().map(|&(_, m)| m).collect();
                while let Some(member) = queue.pop_front() {
                    if offends(member).is_some() {
                        continue;
                    }
                    match member {
                        Member::Principal(p) => {
                            compliant.insert(p);
                        }
                        Member::Group(GroupId(h)) => {
                            if entered.insert(h) {
                                let inner = pending.get(h)?;
                                queue.extend(inner.members.iter().map(|&(_, m)| m));
                            }
                        }
                    }
                }
                for &p in &seen_principals {
                    if compliant.contains(&p) {
                        continue;
                    }
                    let principal = principals.get_mut(p)?;
                    if let Some(m) = principal
                        .memberships
                        .iter_mut()
                        .find(|m| m.group == GroupId(g))
                    {
                        m.compliant = false;
                    }
                }
            }
            if group.locked {
                for o in offenders
                    .iter()
                    .filter(|o| !group.grandfathered.contains(&*o.email))
                {
                    let via = if o.via.is_empty() {
                        "a direct member".to_owned()
                    } else {
                        format!("via {}", join_arcs(&o.via))
                    };
                    self.invalid(
                        format!("group[{}].locked", group.file_index),
                        format!(
                            "\"{}\" ({via}) {} and is not in grandfathered; a locked group \
                             accepts no new non-compliant members",
                            o.email,
                            o.rule_text()
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
                file_index: p.file_index,
                member_index: p.members.iter().map(|&(j, _)| j).collect(),
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
            clients: std::mem::take(&mut self.clients),
            shared: Vec::new(),
        })
    }
}

/// docs/policy.md order: user switch (off only), then the group policy with the lowest priority
/// number that sets the value, then the OU's effective value.
///
/// A non-compliant membership (the principal breaks the group's restriction, or arrives only
/// through a nested group that does) never *grants* through that group's policy: each setting is
/// resolved twice, with every membership and with the compliant ones only, and the stricter of
/// the two applies. So such a group can still take access away, never give it. Routing and the
/// report-only switch come from compliant memberships only.
fn effective(principal: &Principal, ou: &Settings, groups: &[Group]) -> Settings {
    let policies = |compliant_only: bool| {
        let mut out: Vec<(&Group, &GroupPolicy)> = principal
            .memberships
            .iter()
            .filter(|m| m.compliant || !compliant_only)
            .filter_map(|m| groups.get(m.group.0))
            .filter_map(|g| g.policy.as_ref().map(|p| (g, p)))
            .collect();
        out.sort_by_key(|(_, p)| p.priority);
        out
    };
    let (all, safe) = (policies(false), policies(true));
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
    // The stricter of the two resolutions of a switch: `all` unless it grants what `safe` does not.
    let switch = |get: fn(&PartialSettings) -> Option<&bool>, fallback: &Sourced<bool>| {
        let (a, s) = (pick(&all, get, fallback), pick(&safe, get, fallback));
        if a.value && !s.value { s } else { a }
    };
    let off = Sourced {
        value: false,
        source: Source::User,
    };
    let imap_clients = {
        let get: fn(&PartialSettings) -> Option<&ImapClients> = |p| p.imap_clients.as_ref();
        let (a, s) = (
            pick(&all, get, &ou.imap_clients),
            pick(&safe, get, &ou.imap_clients),
        );
        match (&a.value, &s.value) {
            (ImapClients::All, ImapClients::Allowlist(_)) => s,
            (ImapClients::Allowlist(x), ImapClients::Allowlist(y)) if x != y => Sourced {
                value: ImapClients::Allowlist(
                    x.iter().filter(|id| y.contains(id)).cloned().collect(),
                ),
                source: a.source,
            },
            _ => a,
        }
    };
    let enforce = {
        let get: fn(&PartialSettings) -> Option<&Enforce> = |p| p.enforce.as_ref();
        let (a, s) = (pick(&all, get, &ou.enforce), pick(&safe, get, &ou.enforce));
        // On beats off; among report-only values, the earlier switch-on day is stricter.
        let key = |e: &Enforce| (e.on, e.from.map(std::cmp::Reverse));
        if key(&a.value) >= key(&s.value) { a } else { s }
    };
    let upstream = match &principal.upstream {
        Some(route) => Some(Sourced {
            value: route.clone(),
            source: Source::User,
        }),
        None => safe
            .iter()
            .find_map(|(g, p)| {
                p.settings.upstream.as_ref().map(|v| Sourced {
                    value: v.clone(),
                    source: Source::Group(g.email.clone()),
                })
            })
            .or_else(|| ou.upstream.clone()),
    };
    Settings {
        pop: if principal.pop_off {
            off.clone()
        } else {
            switch(|s| s.pop.as_ref(), &ou.pop)
        },
        imap: if principal.imap_off {
            off
        } else {
            switch(|s| s.imap.as_ref(), &ou.imap)
        },
        imap_clients,
        password_logins: switch(|s| s.password_logins.as_ref(), &ou.password_logins),
        upstream,
        enforce,
    }
}

/// Which rule, if any, a member of `kind` with `email` breaks; `nested` is a group member's
/// own restriction. Kind is checked first: it is the more basic of the three.
fn breaks(
    r: &Restriction,
    kind: MemberKind,
    email: &str,
    internal: &[String],
    nested: Option<&Restriction>,
) -> Option<Rule> {
    match r.allows(kind) {
        Allow::No => return Some(Rule::Kind),
        Allow::Internal if !internal.iter().any(|d| d == domain(email)) => {
            return Some(Rule::External);
        }
        _ => {}
    }
    match nested {
        Some(child) if !child.at_least(r) => Some(Rule::Weaker),
        _ => None,
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
