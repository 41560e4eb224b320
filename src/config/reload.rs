//! Reload triggers: SIGHUP and changes to the config files on disk.
//!
//! The files are watched through their *directories*, because editors and Kubernetes
//! ConfigMaps replace a file by rename or by swapping a symlink, which a watch on the file
//! itself would lose. Bursts of events (an editor writes, renames, touches) are debounced into
//! one reload. Each reload loads the whole config from disk and hands it to the [`Reloader`],
//! which builds it aside and swaps it in only if everything builds: an invalid config is
//! rejected and the old one keeps serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::audit::{Reload, ReloadOutcome};
use crate::config::Config;
use crate::metrics::ReloadResult;
use crate::server::Reloader;

/// Quiet time after the last file event before reloading: long enough for an editor's
/// write-rename-chmod burst, short enough to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// The log target of the file-watching backend (the `notify` crate, through `tracing-log`).
const BACKEND_TARGET: &str = "notify";

/// `filter` with the watching backend capped at `info`, unless `filter` names its target.
///
/// The backend logs every inotify event at `trace` (and some at `debug`), for every file in a
/// watched directory, not just the config files. With `filter = "trace"` and stderr written
/// next to the config (`2> /etc/mailgate/mailgate.log`), each log line was itself an event,
/// logged in turn: 12 MB/s of log from an idle server (issue 9). The watcher logs what matters
/// itself, once per debounced reload. An operator debugging the backend names it
/// (`"info,notify=trace"`) and gets every event, knowingly.
pub fn quiet_backend(filter: &str) -> String {
    let named = filter.split(',').any(|directive| {
        directive
            .trim()
            .strip_prefix(BACKEND_TARGET)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['=', ':', '[']))
    });
    if named {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        format!("{BACKEND_TARGET}=info")
    } else {
        format!("{filter},{BACKEND_TARGET}=info")
    }
}

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied { generation: u64 },
    Rejected { error: String },
}

/// Load `path` and apply it. Logs, counts and audits the result either way.
pub fn reload_from(path: &Path, reloader: &Reloader, trigger: &str) -> Outcome {
    let digest = digest(path);
    let outcome = match Config::load(path) {
        Ok(config) => match reloader.reload(config) {
            Ok(generation) => Outcome::Applied { generation },
            Err(e) => Outcome::Rejected {
                error: e.to_string(),
            },
        },
        Err(errors) => Outcome::Rejected {
            error: errors.to_string(),
        },
    };
    let services = &reloader.shared().services;
    let (result, audited) = match &outcome {
        Outcome::Applied { .. } => (ReloadResult::Ok, ReloadOutcome::Applied),
        Outcome::Rejected { error } => (
            ReloadResult::Rejected,
            ReloadOutcome::Rejected {
                error: error.clone(),
            },
        ),
    };
    services.metrics.reload(result);
    services.audit.reload(Reload {
        outcome: audited,
        config_digest: digest,
        source: Default::default(),
        changes: None,
    });
    match &outcome {
        Outcome::Applied { generation } => {
            tracing::info!(trigger, generation, "configuration reloaded");
        }
        Outcome::Rejected { error } => {
            tracing::error!(trigger, %error, "reload rejected; the previous configuration stays in force");
        }
    }
    outcome
}

/// `sha256:` and the first 16 hex digits of the SHA-256 over the config file and the files it
/// names: tells an operator which version of the files a reload read. `None` when the main file
/// cannot be read.
pub fn digest(path: &Path) -> Option<String> {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    hash.update(std::fs::read(path).ok()?);
    for file in watched_files(path) {
        if file != absolute(path)
            && let Ok(bytes) = std::fs::read(&file)
        {
            hash.update(bytes);
        }
    }
    let hex: String = hash
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256:{hex}"))
}

/// Files whose change triggers a reload: the main config and every file it names that holds
/// configuration (not certificates: they are re-read on every reload anyway).
fn watched_files(path: &Path) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.insert(absolute(path));
    if let Ok(config) = Config::load(path) {
        files.extend(config.watched_files().into_iter().map(|p| absolute(&p)));
    }
    files
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Reload on SIGHUP and on changes to the config files until the returned future is dropped.
/// Each applied or rejected reload is also sent to `outcomes` when given (tests). The SIGHUP
/// handler is installed here, before the future is first polled, so a SIGHUP right after
/// start-up reloads instead of killing the process.
pub fn watch(
    path: PathBuf,
    reloader: Reloader,
    outcomes: Option<mpsc::Sender<Outcome>>,
) -> impl std::future::Future<Output = ()> {
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    watch_with(path, reloader, outcomes, hangup)
}

async fn watch_with(
    path: PathBuf,
    reloader: Reloader,
    outcomes: Option<mpsc::Sender<Outcome>>,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let (events, mut changed) = mpsc::channel::<()>(16);
    let files = watched_files(&path);
    tracing::debug!(?files, "watching config files");
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let watcher = {
        let files = files.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            if event.paths.iter().any(|p| files.contains(p)) {
                let _ = events.try_send(());
            }
        })
    };
    let _watcher = match watcher {
        Ok(mut w) => {
            for dir in &dirs {
                if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch config directory");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "config file watching unavailable; SIGHUP still reloads");
            None
        }
    };
    loop {
        let trigger = tokio::select! {
            Some(()) = changed.recv() => {
                // Debounce: wait until the files have been quiet for DEBOUNCE, unless the
                // operator says "now" with SIGHUP (edit, then `systemctl reload`).
                loop {
                    tokio::select! {
                        quiet = tokio::time::timeout(DEBOUNCE, changed.recv()) => {
                            if !matches!(quiet, Ok(Some(()))) {
                                break "file";
                            }
                        }
                        Some(()) = async {
                            match hangup.as_mut() {
                                Some(h) => h.recv().await,
                                None => std::future::pending().await,
                            }
                        } => break "sighup",
                    }
                }
            }
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "sighup",
            else => return,
        };
        let outcome = reload_from(&path, &reloader, trigger);
        if let Some(tx) = &outcomes {
            let _ = tx.send(outcome).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watching_backend_is_capped_unless_named() {
        assert_eq!(quiet_backend("trace"), "trace,notify=info");
        assert_eq!(
            quiet_backend("info,mailgate=debug"),
            "info,mailgate=debug,notify=info"
        );
        assert_eq!(quiet_backend(""), "notify=info");
        for named in [
            "trace,notify=trace",
            "notify::inotify=debug",
            "warn, notify",
        ] {
            assert_eq!(quiet_backend(named), named);
        }
        // A target that merely starts with the same letters is another crate.
        assert_eq!(quiet_backend("notifyx=trace"), "notifyx=trace,notify=info");
        // Whatever it returns is a filter tracing accepts.
        for filter in ["trace", "", "info,mailgate::session=debug"] {
            let quiet = quiet_backend(filter);
            assert!(
                tracing_subscriber::EnvFilter::try_new(&quiet).is_ok(),
                "{quiet}"
            );
        }
    }
}
