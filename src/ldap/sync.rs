//! The fail-static sync cycle: read the directory server, check the result, build the new
//! directory aside and swap it in through the same [`Reloader`] a config file change uses.
//!
//! | trigger                                  | on success                 | on failure          |
//! |------------------------------------------|----------------------------|---------------------|
//! | start ([`start`])                        | serve it, write the cache  | serve `cache_file` (loud warning); no cache: refuse to start |
//! | every `refresh`, SIGHUP, a config reload that adds `[policy.ldap]` | swap, write the cache | keep the directory in force |
//! | `POST /directory/sync` (`mailgate directory sync`) | as above; `force=1` skips the safety valve; `dry_run=1` only reports the diff | as above |
//!
//! A sync "fails" when the server cannot be read (connect, bind, search, timeout), when the
//! result does not merge with `directory.toml` (`invalid`), or when it would remove more than
//! `max_removed_fraction` of the users in force (`safety_valve`: a filter or bind that suddenly
//! sees half the tree is far likelier than half the company leaving). Every failure and every
//! applied change is logged, counted (`mailgate_directory_sync_*`) and written as an audit
//! `reload` record with `source: "ldap"`; a sync that finds nothing changed only updates the
//! metrics (no new generation, so live sessions are not re-checked every `refresh`).
//!
//! Revocation: a user the new directory refuses (suspended, moved to an OU without the
//! protocol) is refused at the next login after the swap; with `revoke_on_reload` live sessions
//! are cut by the same generation change a file reload makes. Worst case from the LDAP change:
//! `refresh` + the sync's own duration + the revocation re-check.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{SyncError, fetch};
use crate::audit::{Reload, ReloadOutcome, ReloadSource};
use crate::config::Config;
use crate::config::ldap::LdapConfig;
use crate::directory::ldap::{Diff, Snapshot, unused_ous};
use crate::server::{Reloader, Services};

/// What a sync is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Apply even past the safety valve (the operator checked the change).
    pub force: bool,
    /// Report the diff only.
    pub dry_run: bool,
    /// `start`, `refresh`, `sighup`, `reload`, `admin`: for the log.
    pub trigger: &'static str,
}

/// What a sync did; the JSON answer of `POST /directory/sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub applied: bool,
    pub dry_run: bool,
    /// Why it was not applied (`None` when applied, or for a clean dry run).
    pub error: Option<String>,
    /// The metric `cause` of `error`.
    pub cause: Option<String>,
    /// The changes, one per line, then a summary (empty when nothing was read).
    pub changes: String,
    pub users: usize,
    pub groups: usize,
    pub took_ms: u64,
}

/// Runs syncs against the server's current config. Cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    inner: Arc<Inner>,
}

struct Inner {
    reloader: Reloader,
    /// One sync at a time: a SIGHUP during a long refresh waits instead of reading twice.
    running: tokio::sync::Mutex<()>,
    wake: Notify,
}

/// The cache file: the last applied snapshot and when it was read.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    /// Unix seconds.
    synced_at: u64,
    snapshot: Snapshot,
}

impl Syncer {
    pub fn new(reloader: Reloader) -> Syncer {
        Syncer {
            inner: Arc::new(Inner {
                reloader,
                running: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
            }),
        }
    }

    /// Ask [`Syncer::run`] for a sync now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Sync every `refresh`, on SIGHUP, on [`Syncer::wake`], and as soon as a config reload
    /// adds `[policy.ldap]`, until dropped. The SIGHUP handler is installed before the first
    /// poll (as `config::reload::watch`), so a SIGHUP right after start syncs.
    pub fn run(self) -> impl std::future::Future<Output = ()> {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        self.run_with(hangup)
    }

    async fn run_with(self, mut hangup: Option<tokio::signal::unix::Signal>) {
        let shared = self.inner.reloader.shared().clone();
        let mut generations = shared.subscribe();
        loop {
            let current = shared.current();
            let ldap = current.config.policy.ldap.clone();
            if ldap.is_some() && shared.ldap_snapshot().is_none() {
                // A reload added `[policy.ldap]`: sync now rather than a `refresh` later. On
                // failure this falls through to the wait below, so a server that is down is
                // retried every `refresh`, not in a tight loop.
                self.sync(Request {
                    force: false,
                    dry_run: false,
                    trigger: "reload",
                })
                .await;
            }
            // Without LDAP, wait for a reload that may add it.
            let refresh = ldap
                .as_ref()
                .map_or(Duration::from_secs(3600), |l| l.refresh);
            let trigger = tokio::select! {
                () = tokio::time::sleep(refresh) => "refresh",
                () = self.inner.wake.notified() => "admin",
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => "sighup",
                changed = generations.changed(), if ldap.is_none() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if shared.current().config.policy.ldap.is_some() {
                self.sync(Request {
                    force: false,
                    dry_run: false,
                    trigger,
                })
                .await;
            }
        }
    }

    /// One sync against the config in force. Never panics, never leaves a half-applied state.
    pub async fn sync(&self, request: Request) -> Report {
        let _running = self.inner.running.lock().await;
        let started = Instant::now();
        let shared = self.inner.reloader.shared().clone();
        let config = shared.current().config.clone();
        let Some(ldap) = config.policy.ldap.clone() else {
            return Report {
                applied: false,
                dry_run: request.dry_run,
                error: Some("no [policy.ldap] in the configuration".to_owned()),
                cause: None,
                changes: String::new(),
                users: 0,
                groups: 0,
                took_ms: 0,
            };
        };
        let services = shared.services.clone();
        let fail = |e: SyncError, diff: Option<&Diff>, report_only: bool| {
            let took = started.elapsed();
            if !report_only {
                record_failure(&services, &e, diff, took, request.trigger);
            }
            Report {
                applied: false,
                dry_run: request.dry_run,
                error: Some(e.to_string()),
                cause: Some(e.cause().to_owned()),
                changes: diff.map(ToString::to_string).unwrap_or_default(),
                users: 0,
                groups: 0,
                took_ms: millis(took),
            }
        };
        let snapshot = match fetch(&ldap).await {
            Ok(s) => s,
            Err(e) => return fail(e, None, request.dry_run),
        };
        let old = shared.ldap_snapshot().unwrap_or_default();
        let diff = Diff::between(&old, &snapshot);
        if !request.force && diff.removed_fraction() > ldap.max_removed_fraction {
            let e = SyncError::SafetyValve {
                removed: diff.removed.len(),
                before: diff.users_before,
                percent: diff.removed_fraction() * 100.0,
                max: ldap.max_removed_fraction,
            };
            return fail(e, Some(&diff), request.dry_run);
        }
        let (users, groups) = (snapshot.users.len(), snapshot.groups.len());
        if request.dry_run {
            // Whether it would merge, without swapping anything in.
            let merged = tokio::task::spawn_blocking({
                let config = config.clone();
                let snapshot = snapshot.clone();
                move || config.with_snapshot(&snapshot).map(|_| ())
            })
            .await;
            let error = match merged {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(SyncError::Invalid(e.to_string())),
                Err(_) => Some(SyncError::Invalid("merge task failed".to_owned())),
            };
            return Report {
                applied: false,
                dry_run: true,
                cause: error.as_ref().map(|e| e.cause().to_owned()),
                error: error.map(|e| e.to_string()),
                changes: diff.to_string(),
                users,
                groups,
                took_ms: millis(started.elapsed()),
            };
        }
        if *old == snapshot {
            // Nothing changed: no new generation (which would rebuild TLS, re-probe upstreams
            // and re-check every live session), no cache write, no audit record every
            // `refresh`; only the metrics say the directory is current.
            let took = started.elapsed();
            services
                .metrics
                .directory_synced(now_unix(), took, users, groups);
            tracing::debug!(
                trigger = request.trigger,
                users,
                groups,
                "LDAP directory unchanged"
            );
            return Report {
                applied: true,
                dry_run: false,
                error: None,
                cause: None,
                changes: diff.to_string(),
                users,
                groups,
                took_ms: millis(took),
            };
        }
        let snapshot = Arc::new(snapshot);
        let reloader = self.inner.reloader.clone();
        // Building 100,000 users takes a while: off the async workers.
        let applied = tokio::task::spawn_blocking({
            let snapshot = snapshot.clone();
            move || reloader.apply_snapshot(snapshot)
        })
        .await;
        let generation = match applied {
            Ok(Ok(generation)) => generation,
            Ok(Err(crate::server::Error::Directory(errors))) => {
                return fail(SyncError::Invalid(errors.to_string()), Some(&diff), false);
            }
            Ok(Err(e)) => return fail(SyncError::Invalid(e.to_string()), Some(&diff), false),
            Err(_) => {
                return fail(
                    SyncError::Invalid("merge task failed".to_owned()),
                    Some(&diff),
                    false,
                );
            }
        };
        let took = started.elapsed();
        write_cache(&ldap, &snapshot);
        record_success(
            &services,
            &snapshot,
            &diff,
            took,
            request.trigger,
            generation,
        );
        warn_about(&config.policy.directory_text, &snapshot);
        Report {
            applied: true,
            dry_run: false,
            error: None,
            cause: None,
            changes: diff.to_string(),
            users,
            groups,
            took_ms: millis(took),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `sha256:` and 16 hex digits over the snapshot: which version of the organisation a
/// `reload` record applied.
fn digest(snapshot: &Snapshot) -> Option<String> {
    use sha2::{Digest as _, Sha256};
    let json = serde_json::to_vec(snapshot).ok()?;
    let hex: String = Sha256::digest(&json)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256:{hex}"))
}

fn record_success(
    services: &Services,
    snapshot: &Snapshot,
    diff: &Diff,
    took: Duration,
    trigger: &str,
    generation: u64,
) {
    services.metrics.directory_synced(
        now_unix(),
        took,
        snapshot.users.len(),
        snapshot.groups.len(),
    );
    services.audit.reload(Reload {
        outcome: ReloadOutcome::Applied,
        config_digest: digest(snapshot),
        source: ReloadSource::Ldap,
        changes: Some(diff.summary()),
    });
    tracing::info!(
        trigger,
        generation,
        users = snapshot.users.len(),
        groups = snapshot.groups.len(),
        took_ms = millis(took),
        changes = %diff.summary(),
        "LDAP directory sync applied"
    );
}

fn record_failure(
    services: &Services,
    e: &SyncError,
    diff: Option<&Diff>,
    took: Duration,
    trigger: &str,
) {
    services.metrics.directory_sync_failed(e.cause(), took);
    services.audit.reload(Reload {
        outcome: ReloadOutcome::Rejected {
            error: e.to_string(),
        },
        config_digest: None,
        source: ReloadSource::Ldap,
        changes: diff.map(Diff::summary),
    });
    tracing::error!(
        trigger,
        cause = e.cause(),
        error = %e,
        "LDAP directory sync not applied; the directory in force stays"
    );
}

/// Entries left out and OU settings no LDAP user reaches: worth a look, never an error.
fn warn_about(directory_text: &str, snapshot: &Snapshot) {
    if !snapshot.skipped.is_empty() {
        let first: Vec<&str> = snapshot
            .skipped
            .iter()
            .take(5)
            .map(String::as_str)
            .collect();
        tracing::warn!(
            count = snapshot.skipped.len(),
            first = %first.join("; "),
            "LDAP entries left out of the directory"
        );
    }
    for path in unused_ous(directory_text, snapshot) {
        tracing::warn!(
            ou = %path,
            "directory.toml configures an OU no LDAP user is in (kept; check the OU tree or ou_map)"
        );
    }
}

/// Writes the cache atomically (temp file, then rename), readable by the owner only: it holds
/// the organisation (no secrets). A failure is logged: the sync itself was fine.
fn write_cache(ldap: &LdapConfig, snapshot: &Snapshot) {
    let Some(path) = &ldap.cache_file else { return };
    let file = CacheFile {
        synced_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        snapshot: snapshot.clone(),
    };
    let result = (|| -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(&json)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        tracing::warn!(file = %path.display(), error = %e, "cannot write the LDAP cache file");
    }
}

/// The last applied snapshot from `cache_file`, and its age in seconds.
pub fn read_cache(path: &Path) -> Result<(Snapshot, u64), SyncError> {
    let err = |reason: String| SyncError::Cache {
        file: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let file: CacheFile = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok((file.snapshot, now.saturating_sub(file.synced_at)))
}

/// Where the first directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// No `[policy.ldap]`.
    FileOnly,
    Server,
    /// The server could not be read; `cache_file`, this many seconds old.
    Cache {
        age_secs: u64,
    },
}

/// Start-up: `config` with its directory merged from a first sync, or — when the server cannot
/// be read or its answer does not merge — from `cache_file`, with a loud warning. `Err` (and no
/// start) only when neither works: refusing every login is worse than not starting, where the
/// operator sees why at once.
pub async fn start(
    config: Config,
    services: &Services,
) -> Result<(Config, Option<Arc<Snapshot>>, Origin), SyncError> {
    let Some(ldap) = config.policy.ldap.clone() else {
        return Ok((config, None, Origin::FileOnly));
    };
    let started = Instant::now();
    let fetched = fetch(&ldap).await.and_then(|snapshot| {
        config
            .with_snapshot(&snapshot)
            .map(|merged| (merged, snapshot))
            .map_err(|e| SyncError::Invalid(e.to_string()))
    });
    let error = match fetched {
        Ok((merged, snapshot)) => {
            write_cache(&ldap, &snapshot);
            record_success(
                services,
                &snapshot,
                &Diff::between(&Snapshot::default(), &snapshot),
                started.elapsed(),
                "start",
                1,
            );
            warn_about(&config.policy.directory_text, &snapshot);
            return Ok((merged, Some(Arc::new(snapshot)), Origin::Server));
        }
        Err(e) => e,
    };
    record_failure(services, &error, None, started.elapsed(), "start");
    let Some(cache) = &ldap.cache_file else {
        return Err(error);
    };
    let (snapshot, age_secs) = match read_cache(cache) {
        Ok(found) => found,
        Err(cache_error) => {
            return Err(SyncError::Cache {
                file: cache.display().to_string(),
                reason: format!("{error}; and no usable cache: {cache_error}"),
            });
        }
    };
    let merged = config
        .with_snapshot(&snapshot)
        .map_err(|e| SyncError::Invalid(format!("{error}; and the cache does not merge: {e}")))?;
    tracing::error!(
        error = %error,
        cache = %cache.display(),
        age_secs,
        users = snapshot.users.len(),
        "LDAP DIRECTORY UNREACHABLE AT START: serving the organisation of the cache file, \
         {age_secs} s old; moves and suspensions since then are NOT enforced until a sync \
         succeeds"
    );
    Ok((merged, Some(Arc::new(snapshot)), Origin::Cache { age_secs }))
}

/// `POST /directory/sync[?force=1][&dry_run=1]` on the admin listener: loopback only, with the
/// `X-Mailgate-Admin: 1` header, as the `/throttle` routes.
pub fn routes(syncer: Syncer) -> Router {
    Router::new()
        .route("/directory/sync", post(sync_route))
        .with_state(syncer)
}

async fn sync_route(
    State(syncer): State<Syncer>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(no) = crate::admin::throttle::refused(peer, &headers) {
        return no;
    }
    if headers
        .get(crate::admin::throttle::ADMIN_HEADER)
        .and_then(|v| v.to_str().ok())
        != Some("1")
    {
        return (StatusCode::FORBIDDEN, "X-Mailgate-Admin: 1 required\n").into_response();
    }
    let mut request = Request {
        force: false,
        dry_run: false,
        trigger: "admin",
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let on = matches!(value.as_ref(), "1" | "true");
        match key.as_ref() {
            "force" => request.force = on,
            "dry_run" => request.dry_run = on,
            _ => {
                return (StatusCode::BAD_REQUEST, "expected force= and/or dry_run=\n")
                    .into_response();
            }
        }
    }
    // Its own task: a client that gives up (or the admin listener's `request_timeout`) must
    // not cancel a sync half-way; it completes, is logged and audited, and the answer is lost.
    let Ok(report) = tokio::spawn(async move { syncer.sync(request).await }).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let status = if report.applied || (report.dry_run && report.cause.is_none()) {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    match serde_json::to_string(&report) {
        Ok(body) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
