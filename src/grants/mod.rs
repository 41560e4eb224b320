//! Stage: grants. The OAuth grants through which mailgate opens shared mailboxes: one refresh
//! token per grant, authorised once by an administrator (`mailgate grant authorize`), kept in
//! `[grants] dir`, and the access tokens refreshed from it.
//!
//! Input: a grant name (from the shared mailbox a proven, assigned user asked for). Output: an
//! access token for the upstream XOAUTH2 login as the mailbox, or why there is none
//! ([`Unusable`]: the grant needs re-authorisation, or the provider did not answer).
//!
//! ```text
//! access_token(NAME) ─▶ lock NAME (single flight)
//!                          ▼
//!              read DIR/NAME.json ─ missing / needs_reauthorization ─▶ NeedsReauthorization
//!                          │ active
//!                          ▼
//!              cached and not near expiry? ─yes─▶ token
//!                          │ no
//!                          ▼
//!           provider failed < retry_after ago? ─yes─▶ Unavailable (no request)
//!                          │ no
//!                          ▼
//!              refresh at the token endpoint ─ invalid_grant ─▶ mark file, one `grant`
//!                          │ ok                                  audit record ─▶ NeedsReauth…
//!                          │                 ─ no answer / 5xx ─▶ Unavailable (retry_after)
//!                          ▼
//!     rotated refresh token? ─▶ persist (write + fsync + rename, 0600) BEFORE use ─▶ token
//! ```
//!
//! The file is read at every login, so a grant authorised or re-authorised
//! by `mailgate grant authorize` while the server runs is used at the next login, without a
//! restart or reload. Concurrent logins for one grant wait on one lock: 50 of them cause one
//! token request. Tokens live in [`Secret`]s and never reach a log, record or error.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::audit;
use crate::config::Config;
use crate::secret::Secret;

pub mod admin;
pub mod client;
pub mod file;

pub use file::{GrantFile, GrantState};

/// Why no access token can be had for a grant. Both are temporary failures at the login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// Not authorised, or the provider refused its refresh token: an administrator must run
    /// `mailgate grant authorize NAME`. The provider is not asked again until then.
    #[error("grant {0:?} needs re-authorisation by an administrator")]
    NeedsReauthorization(String),
    /// The provider did not answer usably (down, slow, server error), or the grant store is
    /// unreadable. The detail never holds a token.
    #[error("grant {grant:?} unavailable: {detail}")]
    Unavailable { grant: String, detail: String },
}

/// How long before its expiry an access token is refreshed: a quarter of its lifetime, at most
/// a minute, so a token never expires between our check and the upstream's.
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 4).min(Duration::from_secs(60))
}

/// Lifetime assumed when the provider does not say (`expires_in` is only RECOMMENDED, RFC 6749
/// 5.1): five minutes, short enough that a wrong guess costs little.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// The access tokens of every grant, and who is refreshing which. One per server: a reload
/// keeps the cached tokens.
pub struct GrantStore {
    services: crate::server::Services,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
}

#[derive(Default)]
struct Entry {
    token: Option<Cached>,
    /// The provider failed to answer at this time; no new request before `retry_after`.
    failed_at: Option<Instant>,
    /// This server saw the grant unusable (needs re-authorisation): its return to service is
    /// worth one `grant` record too.
    was_dead: bool,
}

struct Cached {
    token: Secret<String>,
    refresh_at: Instant,
}

impl GrantStore {
    pub fn new(services: crate::server::Services) -> GrantStore {
        GrantStore {
            services,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, name: &str) -> Arc<tokio::sync::Mutex<Entry>> {
        let mut entries = match self.entries.lock() {
            Ok(e) => e,
            // A panic while holding this map lock cannot leave it inconsistent (one insert).
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.entry(name.to_owned()).or_default().clone()
    }

    /// An access token for `grant`, refreshed when needed (see the module docs).
    pub async fn access_token(
        &self,
        config: &Config,
        grant: &str,
    ) -> Result<Secret<String>, Unusable> {
        let Some(grants) = &config.grants else {
            return Err(Unusable::Unavailable {
                grant: grant.to_owned(),
                detail: "no [grants] table".into(),
            });
        };
        let entry = self.entry(grant);
        // Single flight: the first login refreshes, the others wait here and then find its
        // token in the cache.
        let mut entry = entry.lock().await;
        // The file is read at every login (a few hundred bytes): a grant revoked or marked
        // dead by an administrator stops working at once, one re-authorised works at once.
        let stored = match read(&grants.dir, grant).await {
            Ok(stored) if stored.state == GrantState::Active => stored,
            Ok(_) | Err(Unusable::NeedsReauthorization(_)) => {
                entry.token = None;
                entry.was_dead = true;
                return Err(Unusable::NeedsReauthorization(grant.to_owned()));
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        if let Some(cached) = &entry.token
            && now < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        if let Some(failed) = entry.failed_at
            && now.duration_since(failed) < grants.retry_after
        {
            return Err(Unusable::Unavailable {
                grant: grant.to_owned(),
                detail: "provider failed recently; not asked again yet".into(),
            });
        }
        let Some(oauth) = config
            .oauth
            .clients
            .iter()
            .find(|c| c.name == stored.client)
        else {
            return Err(Unusable::Unavailable {
                grant: grant.to_owned(),
                detail: format!("no [[oauth.client]] named {:?}", stored.client),
            });
        };
        // Across processes too (two instances on one host, an old and a new one during a
        // restart): a provider that rotates refresh tokens treats a second use of one as theft
        // and revokes the grant. So the refresh holds an exclusive lock on the grant and reads
        // the file again under it: another process may have rotated the token meanwhile.
        let _lock = lock(&grants.dir, grant, oauth.request_timeout * 2).await?;
        let stored = match read(&grants.dir, grant).await? {
            fresh if fresh.state == GrantState::Active => fresh,
            _ => {
                entry.token = None;
                entry.was_dead = true;
                return Err(Unusable::NeedsReauthorization(grant.to_owned()));
            }
        };
        let started = Instant::now();
        let refreshed = client::refresh(oauth, &stored.refresh_token).await;
        let metrics = &self.services.metrics;
        metrics.grant_refresh(started.elapsed());
        let tokens = match refreshed {
            Ok(tokens) => tokens,
            Err(e) if e.is_dead_grant() => {
                entry.token = None;
                entry.was_dead = true;
                tracing::warn!(grant, error = %e, "grant refused by the provider; needs re-authorisation");
                let detail = match &e {
                    client::Error::Refused { code, .. } => Some(code.clone()),
                    _ => None,
                };
                self.mark_dead(&grants.dir, stored, detail).await;
                return Err(Unusable::NeedsReauthorization(grant.to_owned()));
            }
            Err(e) => {
                entry.failed_at = Some(Instant::now());
                tracing::warn!(grant, error = %e, "grant refresh failed");
                metrics.grant_event(crate::metrics::GrantEvent::RefreshFailed);
                return Err(Unusable::Unavailable {
                    grant: grant.to_owned(),
                    detail: e.to_string(),
                });
            }
        };
        entry.failed_at = None;
        // The rotated refresh token is on disk before its access token is used: a crash from
        // here on can lose an access token (refreshed again) but never the grant.
        let mut updated = stored.clone();
        if let Some(rotated) = tokens.refresh_token {
            updated.refresh_token = rotated;
        }
        updated.last_refresh = Some(file::now_rfc3339());
        updated.detail = None;
        if let Err(e) = persist(&grants.dir, &stored, updated).await {
            tracing::error!(grant, error = %e, "cannot persist the refreshed grant");
            return Err(Unusable::Unavailable {
                grant: grant.to_owned(),
                detail: e.to_string(),
            });
        }
        metrics.grant_event(crate::metrics::GrantEvent::Refreshed);
        if std::mem::take(&mut entry.was_dead) {
            tracing::info!(grant, "grant re-authorised; in use again");
            metrics.grant_event(crate::metrics::GrantEvent::Reauthorized);
            self.services.audit.grant(audit::GrantChange {
                grant: grant.to_owned(),
                state: GrantState::Active.as_str(),
                detail: None,
            });
        }
        let lifetime = tokens.expires_in.unwrap_or(DEFAULT_LIFETIME);
        tracing::debug!(
            grant,
            lifetime_s = lifetime.as_secs(),
            "grant access token refreshed"
        );
        entry.token = Some(Cached {
            token: tokens.access_token.clone(),
            refresh_at: started + lifetime.saturating_sub(margin(lifetime)),
        });
        Ok(tokens.access_token)
    }

    /// The upstream refused `token` for the mailbox: forget it, so the next call refreshes
    /// (the provider may have revoked it while it looked fresh here).
    pub async fn forget(&self, grant: &str, token: &Secret<String>) {
        let entry = self.entry(grant);
        let mut entry = entry.lock().await;
        if entry.token.as_ref().is_some_and(|c| c.token == *token) {
            entry.token = None;
        }
    }

    /// Marks the grant `needs_reauthorization` on disk, unless an administrator replaced it
    /// meanwhile, and says so once: one `grant` audit record and metric per transition (later
    /// logins read the mark and never get here).
    async fn mark_dead(&self, dir: &Path, stored: GrantFile, detail: Option<String>) {
        let name = stored.name.clone();
        let mut dead = stored.clone();
        dead.state = GrantState::NeedsReauthorization;
        dead.detail.clone_from(&detail);
        if let Err(e) = persist(dir, &stored, dead).await {
            tracing::error!(grant = %name, error = %e, "cannot mark the grant as needing re-authorisation");
        }
        self.services
            .metrics
            .grant_event(crate::metrics::GrantEvent::NeedsReauthorization);
        self.services.audit.grant(audit::GrantChange {
            grant: name,
            state: GrantState::NeedsReauthorization.as_str(),
            detail,
        });
    }
}

/// The grant's refresh lock (`DIR/.NAME.lock`, `flock` exclusive), waited for at most `limit`
/// (another holder is bounded by its request timeout). Released when the file is dropped.
async fn lock(dir: &Path, grant: &str, limit: Duration) -> Result<std::fs::File, Unusable> {
    let unavailable = |detail: String| Unusable::Unavailable {
        grant: grant.to_owned(),
        detail,
    };
    let deadline = Instant::now() + limit;
    loop {
        let (dir, name) = (dir.to_owned(), grant.to_owned());
        let tried = tokio::task::spawn_blocking(move || file::try_lock(&dir, &name))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match tried {
            Ok(Some(locked)) => return Ok(locked),
            Ok(None) if Instant::now() < deadline => {
                // Held by another process for one token request at most; polled, since flock
                // has no asynchronous wait.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(None) => return Err(unavailable("refresh lock held too long".into())),
            Err(e) => return Err(unavailable(e.to_string())),
        }
    }
}

async fn read(dir: &Path, grant: &str) -> Result<GrantFile, Unusable> {
    let dir = dir.to_owned();
    let name = grant.to_owned();
    let read = tokio::task::spawn_blocking(move || GrantFile::read(&dir, &name)).await;
    match read {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(file::Error::Missing(..))) => Err(Unusable::NeedsReauthorization(grant.to_owned())),
        Ok(Err(e)) => Err(Unusable::Unavailable {
            grant: grant.to_owned(),
            detail: e.to_string(),
        }),
        Err(e) => Err(Unusable::Unavailable {
            grant: grant.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// Writes `new` over the grant file if it still holds what `was` read: an administrator's
/// re-authorisation written meanwhile wins over our refresh of the old grant.
async fn persist(dir: &Path, was: &GrantFile, new: GrantFile) -> Result<(), String> {
    let dir = dir.to_owned();
    let was_token = was.refresh_token.clone();
    let written = tokio::task::spawn_blocking(move || {
        match GrantFile::read(&dir, &new.name) {
            Ok(current) if current.refresh_token != was_token => {
                tracing::info!(grant = %new.name, "grant re-authorised meanwhile; keeping the new one");
                return Ok(());
            }
            _ => {}
        }
        new.write(&dir)
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_quarter_capped_at_a_minute() {
        assert_eq!(margin(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(60));
    }
}
