//! Stage: directory, file layer. `directory.toml` text in, serde structs that mirror it out.
//!
//! Every struct denies unknown fields, so a misspelt setting is an error instead of a silently
//! inherited value. As in `config/file.rs`, the document is parsed into a [`toml::Table`] first
//! and each `[[ou]]`, `[[user]]` and `[[group]]` is deserialized on its own, so one run reports
//! every schema problem with its key path (`group[2].policy.priority`). Nothing here checks
//! meaning (references, cycles, restrictions): that is `load`'s job.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Allow, Error, MemberKind};

/// The whole `directory.toml`, as written. Items that failed to deserialize are left out and
/// their index recorded, so the validator does not report knock-on errors about them.
#[derive(Debug, Default)]
pub struct Parsed {
    pub internal_domains: Vec<String>,
    /// `(index in the file, item)`, in file order.
    pub ous: Vec<(usize, OuFile)>,
    pub users: Vec<(usize, UserFile)>,
    pub groups: Vec<(usize, GroupFile)>,
    pub clients: Vec<(usize, ClientFile)>,
    pub shared_mailboxes: Vec<(usize, SharedMailboxFile)>,
    pub errors: Vec<Error>,
    /// Emails of `[[user]]` / `[[group]]` tables that failed to deserialize (when readable), so
    /// a group listing them is not reported again as having an unknown member.
    pub broken_principals: Vec<String>,
    /// OU paths of `[[ou]]` tables that failed to deserialize (when readable).
    pub broken_ous: Vec<String>,
}

/// One `[[ou]]`. Every setting is optional: unset inherits from the parent OU.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuFile {
    pub path: String,
    pub description: Option<String>,
    pub pop: Option<bool>,
    pub imap: Option<bool>,
    pub imap_clients: Option<ImapClientsFile>,
    pub imap_allowed_client_ids: Option<Vec<String>>,
    pub password_logins: Option<bool>,
    pub upstream: Option<RouteFile>,
    pub enforce: Option<bool>,
    pub enforce_from: Option<String>,
}

/// The policy settings as written in an `[[ou]]` or a `[group.policy]`. Not deserialized
/// itself: serde's `flatten` cannot be combined with `deny_unknown_fields`, so both tables spell
/// the fields out and convert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsFile {
    pub pop: Option<bool>,
    pub imap: Option<bool>,
    pub imap_clients: Option<ImapClientsFile>,
    pub imap_allowed_client_ids: Option<Vec<String>>,
    pub password_logins: Option<bool>,
    pub upstream: Option<RouteFile>,
    pub enforce: Option<bool>,
    pub enforce_from: Option<String>,
}

/// `upstream = "name"` or `upstream = { imap = "name", pop3 = "name" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RouteFile {
    Named(String),
    PerProtocol(RouteTable),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    pub imap: Option<String>,
    pub pop3: Option<String>,
}

/// `member_restriction = { user = "any", service = "internal", group = "internal" }`: a kind
/// left out may not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRestrictionFile {
    pub user: Option<Allow>,
    pub service: Option<Allow>,
    pub group: Option<Allow>,
}

/// One `[[client]]`: a named OAuth client for allowlists, audit and explain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub name: String,
    pub ids: Vec<String>,
    pub description: Option<String>,
}

macro_rules! settings_of {
    ($t:ty) => {
        impl $t {
            pub fn settings(&self) -> SettingsFile {
                SettingsFile {
                    pop: self.pop,
                    imap: self.imap,
                    imap_clients: self.imap_clients,
                    imap_allowed_client_ids: self.imap_allowed_client_ids.clone(),
                    password_logins: self.password_logins,
                    upstream: self.upstream.clone(),
                    enforce: self.enforce,
                    enforce_from: self.enforce_from.clone(),
                }
            }
        }
    };
}

settings_of!(OuFile);
settings_of!(GroupPolicyFile);

/// `imap_clients = "all" | "allowlist"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapClientsFile {
    All,
    Allowlist,
}

/// One `[[user]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    pub email: String,
    pub ou: String,
    #[serde(default)]
    pub kind: PrincipalKindFile,
    #[serde(default)]
    pub suspended: bool,
    /// Only `false` is meaningful: a user switch can only remove access.
    pub pop: Option<bool>,
    pub imap: Option<bool>,
    pub name: Option<String>,
    /// Where this user's mailboxes live; beats groups and OUs.
    pub upstream: Option<RouteFile>,
}

/// `kind = "user" | "service"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKindFile {
    #[default]
    User,
    Service,
}

/// One `[[group]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub email: String,
    pub description: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
    /// Default: every kind.
    pub allowed_member_kinds: Option<Vec<MemberKind>>,
    #[serde(default)]
    pub internal_only: bool,
    /// Per kind and origin; instead of `allowed_member_kinds` / `internal_only`.
    pub member_restriction: Option<MemberRestrictionFile>,
    #[serde(default)]
    pub locked: bool,
    /// For a locked group: the non-compliant indirect members it had when it was locked.
    #[serde(default)]
    pub grandfathered: Vec<String>,
    pub policy: Option<GroupPolicyFile>,
}

/// `[group.policy]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPolicyFile {
    pub priority: u32,
    pub pop: Option<bool>,
    pub imap: Option<bool>,
    pub imap_clients: Option<ImapClientsFile>,
    pub imap_allowed_client_ids: Option<Vec<String>>,
    pub password_logins: Option<bool>,
    pub upstream: Option<RouteFile>,
    pub enforce: Option<bool>,
    pub enforce_from: Option<String>,
}

/// One `[[shared_mailbox]]`: a mailbox at a provider that assigned users open through mailgate,
/// which logs in as the mailbox with the grant's token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedMailboxFile {
    /// What users ask for (`LOGIN "office@contoso.com*alice@example.com"`).
    pub address: String,
    /// The `[[upstream]]` (main config) holding the mailbox; one per protocol.
    pub upstream: OneOrMany,
    /// The grant (`mailgate grant authorize NAME`) whose token opens it.
    pub grant: String,
    /// Users and groups (nested groups count) who may open it.
    #[serde(default)]
    pub assigned: Vec<String>,
    /// `["imap"]`, `["pop3"]` or both; default: every protocol an upstream is named for.
    pub protocols: Option<Vec<crate::proto::Protocol>>,
    pub description: Option<String>,
}

/// `"name"` or `["name", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Top-level keys, so an unknown one is reported by name.
const TOP_KEYS: &str = "`internal_domains`, `ou`, `user`, `group`, `client`, `shared_mailbox`";

/// Parses `text`, collecting every schema error with its key path. A TOML syntax error stops
/// everything (there is no table to walk) and is reported with its line and column.
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
            "internal_domains" => match value.try_into::<Vec<String>>() {
                Ok(d) => out.internal_domains = d,
                Err(e) => out.errors.push(schema("internal_domains", &e)),
            },
            "ou" => {
                for (i, item) in array_of_tables(&key, value, &mut out.errors)
                    .into_iter()
                    .enumerate()
                {
                    let path = string_key(&item, "path");
                    match section::<OuFile>(&format!("ou[{i}]"), item) {
                        Ok(ou) => out.ous.push((i, ou)),
                        Err(e) => {
                            out.errors.push(e);
                            out.broken_ous.extend(path);
                        }
                    }
                }
            }
            "client" => {
                for (i, item) in array_of_tables(&key, value, &mut out.errors)
                    .into_iter()
                    .enumerate()
                {
                    match section::<ClientFile>(&format!("client[{i}]"), item) {
                        Ok(c) => out.clients.push((i, c)),
                        Err(e) => out.errors.push(e),
                    }
                }
            }
            "user" | "group" => {
                for (i, item) in array_of_tables(&key, value, &mut out.errors)
                    .into_iter()
                    .enumerate()
                {
                    let email = string_key(&item, "email").map(|e| e.to_lowercase());
                    let at = format!("{key}[{i}]");
                    let result = if key == "user" {
                        section::<UserFile>(&at, item).map(|u| out.users.push((i, u)))
                    } else {
                        section::<GroupFile>(&at, item).map(|g| out.groups.push((i, g)))
                    };
                    if let Err(e) = result {
                        out.errors.push(e);
                        out.broken_principals.extend(email);
                    }
                }
            }
            "shared_mailbox" => {
                for (i, item) in array_of_tables(&key, value, &mut out.errors)
                    .into_iter()
                    .enumerate()
                {
                    match section::<SharedMailboxFile>(&format!("shared_mailbox[{i}]"), item) {
                        Ok(m) => out.shared_mailboxes.push((i, m)),
                        Err(e) => out.errors.push(e),
                    }
                }
            }
            _ => out.errors.push(Error::Schema {
                path: key.clone(),
                message: format!("unknown key `{key}`, expected one of {TOP_KEYS}"),
            }),
        }
    }
    out
}

fn string_key(item: &toml::Value, key: &str) -> Option<String> {
    item.get(key)
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
}

/// `[[name]]` must be an array of tables; anything else is reported and yields nothing.
fn array_of_tables(key: &str, value: toml::Value, errors: &mut Vec<Error>) -> Vec<toml::Value> {
    match value {
        toml::Value::Array(items) => items,
        other => {
            errors.push(Error::Schema {
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
fn section<T: DeserializeOwned>(path: &str, value: toml::Value) -> Result<T, Error> {
    value.try_into::<T>().map_err(|e| schema(path, &e))
}

fn schema(path: &str, e: &toml::de::Error) -> Error {
    let (inner, message) = crate::toml_error::split(e);
    let path = match inner {
        Some(inner) => format!("{path}.{inner}"),
        None => path.to_owned(),
    };
    Error::Schema { path, message }
}

fn syntax_error(text: &str, e: &toml::de::Error) -> Error {
    let (line, column, message) = crate::toml_error::syntax(text, e);
    Error::Syntax {
        line,
        column,
        message,
    }
}
