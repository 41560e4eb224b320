//! The client catalogue: well-known OAuth mail clients by name, with the client IDs their
//! tokens carry (`azp` / `client_id`). Allowlists may name a client instead of pasting its IDs,
//! and audit records and `mailgate explain` show the name next to an ID.
//!
//! Built-in entries are public client IDs, each from a published source:
//!
//! - `apple-ios-mail`, `apple-macos-mail`: the IDs the hosted admin console pre-lists for
//!   Google-issued tokens of Apple's Mail on iOS/iPadOS and on macOS.
//! - `thunderbird`: Mozilla Thunderbird's registrations with Google and with Microsoft (Entra
//!   ID), from `kIssuers` in `mailnews/base/src/OAuth2Providers.sys.mjs` of the Thunderbird
//!   source (comm-central), which says they are hard-coded because dynamic client registration
//!   is not supported yet.
//!
//! `[[client]]` tables in `directory.toml` add entries or more IDs to a built-in name.
//!
//! Must not: do I/O.

use std::collections::HashMap;
use std::sync::Arc;

/// One named client and its IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Lowercase, `[a-z0-9-]`: `apple-ios-mail`.
    pub name: Arc<str>,
    pub ids: Vec<String>,
    /// Where the IDs come from, for people.
    pub description: String,
    /// Shipped with mailgate (not from `[[client]]`).
    pub builtin: bool,
}

/// Apple Mail on iOS and iPadOS, Google-issued tokens.
pub const APPLE_IOS_MAIL_GOOGLE: &str =
    "450232826690-0rm6bs9d2fps9tifvk2oodh3tasd7vl7.apps.googleusercontent.com";
/// Apple Mail on macOS, Google-issued tokens.
pub const APPLE_MACOS_MAIL_GOOGLE: &str =
    "946018238758-bi6ni53dfoddlgn97pk3b8i7nphige40.apps.googleusercontent.com";
/// Thunderbird, Google-issued tokens (`kIssuers["accounts.google.com"].clientId`).
pub const THUNDERBIRD_GOOGLE: &str =
    "406964657835-aq8lmia8j95dhl1a2bvharmfk3t1hgqj.apps.googleusercontent.com";
/// Thunderbird, Microsoft-issued tokens (`kIssuers["login.microsoftonline.com"].clientId`).
pub const THUNDERBIRD_MICROSOFT: &str = "9e5f94bc-e8a4-4e73-b8be-63364c29d753";

/// The catalogue in force: built-in entries plus the directory's `[[client]]` tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    clients: Vec<Client>,
    by_name: HashMap<Arc<str>, usize>,
    by_id: HashMap<String, usize>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::builtin()
    }
}

impl Catalogue {
    /// The entries shipped with mailgate.
    pub fn builtin() -> Catalogue {
        let mut c = Catalogue {
            clients: Vec::new(),
            by_name: HashMap::new(),
            by_id: HashMap::new(),
        };
        let entries: [(&str, &[&str], &str); 3] = [
            (
                "apple-ios-mail",
                &[APPLE_IOS_MAIL_GOOGLE],
                "Apple Mail on iOS/iPadOS (Google), as the hosted admin console pre-lists it",
            ),
            (
                "apple-macos-mail",
                &[APPLE_MACOS_MAIL_GOOGLE],
                "Apple Mail on macOS (Google), as the hosted admin console pre-lists it",
            ),
            (
                "thunderbird",
                &[THUNDERBIRD_GOOGLE, THUNDERBIRD_MICROSOFT],
                "Mozilla Thunderbird (Google, Microsoft), from OAuth2Providers.sys.mjs in its \
                 source",
            ),
        ];
        for (name, ids, description) in entries {
            c.add(
                name,
                ids.iter().map(|s| (*s).to_owned()).collect(),
                description,
                true,
            );
        }
        c
    }

    /// Adds a client, or more IDs to an existing name. An ID already named stays with its first
    /// name (the loader refuses a `[[client]]` that repeats one).
    pub fn add(&mut self, name: &str, ids: Vec<String>, description: &str, builtin: bool) {
        let index = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                let name: Arc<str> = Arc::from(name);
                self.by_name.insert(name.clone(), self.clients.len());
                self.clients.push(Client {
                    name,
                    ids: Vec::new(),
                    description: description.to_owned(),
                    builtin,
                });
                self.clients.len() - 1
            }
        };
        for id in ids {
            if self.by_id.contains_key(&id) {
                continue;
            }
            self.by_id.insert(id.clone(), index);
            if let Some(c) = self.clients.get_mut(index) {
                c.ids.push(id);
            }
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Client> {
        self.by_name.get(name).and_then(|&i| self.clients.get(i))
    }

    /// The name of the client with this ID, when catalogued.
    pub fn name_of(&self, id: &str) -> Option<&str> {
        self.by_id
            .get(id)
            .and_then(|&i| self.clients.get(i))
            .map(|c| &*c.name)
    }

    /// Every client, built-in first.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// `id (name)` when catalogued, else the bare ID: how audit-facing text shows a client.
    pub fn label(&self, id: &str) -> String {
        match self.name_of(id) {
            Some(name) => format!("{id} ({name})"),
            None => id.to_owned(),
        }
    }
}
