//! Sink tests: lines on disk, rotation without loss, a full queue, a failing disk, close.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::timeout;

use super::*;
use crate::audit::record::{End, SessionEnd};

/// Every await here is bounded; a hang is a failure, not a stuck CI job.
const WAIT: Duration = Duration::from_secs(10);

fn event(n: u64) -> Event {
    Event::SessionEnd(SessionEnd {
        bytes_up: n,
        bytes_down: 0,
        duration_ms: 0,
        end: End::ClientClosed,
    })
}

/// The `session` of every line in `path` (missing file: none).
fn sessions(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["session"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

async fn flush(audit: &Audit) {
    timeout(WAIT, audit.flush()).await.expect("flush in time");
}

#[tokio::test]
async fn records_become_json_lines_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/audit.log");
    let (audit, writer) = Audit::to_file(&path, DEFAULT_QUEUE).unwrap();
    let task = tokio::spawn(writer.run());
    for i in 0..100 {
        audit.record(&i.to_string(), event(i));
    }
    audit.reload(Reload {
        outcome: crate::audit::ReloadOutcome::Applied,
        config_digest: None,
        source: Default::default(),
        changes: None,
    });
    flush(&audit).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 101);
    assert!(lines[100].contains(r#""event":"reload","session":null"#));
    assert_eq!(
        audit.stats(),
        AuditStats {
            written: 101,
            dropped: 0,
            errors: 0,
            queued: 0
        }
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077 & !0o040, 0, "no access for others: {mode:o}");
    timeout(WAIT, audit.close()).await.unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_loses_nothing_and_new_records_go_to_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let (audit, writer) = Audit::to_file(&path, 1024).unwrap();
    let task = tokio::spawn(writer.run());

    // A producer recording continuously, as sessions do, while the file is rotated under it.
    const TOTAL: u64 = 20_000;
    let (rotate_at, rotate_now) = tokio::sync::oneshot::channel::<()>();
    let producer = {
        let audit = audit.clone();
        tokio::spawn(async move {
            let mut rotate_at = Some(rotate_at);
            for i in 0..TOTAL {
                audit.record(&i.to_string(), event(i));
                if i == TOTAL / 2
                    && let Some(tx) = rotate_at.take()
                {
                    let _ = tx.send(());
                }
                if i % 64 == 0 {
                    // Let the writer run: a real proxy does not produce in one burst, and a
                    // full queue would (correctly) drop records.
                    tokio::task::yield_now().await;
                    while audit.stats().queued > 512 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
    };
    timeout(WAIT, rotate_now).await.unwrap().unwrap();
    // logrotate renames, then signals.
    std::fs::rename(&path, &rotated).unwrap();
    audit.reopen();
    timeout(WAIT, producer).await.unwrap().unwrap();
    flush(&audit).await;
    // The reopen has happened by now: what comes next must be in the new file.
    audit.record(&TOTAL.to_string(), event(TOTAL));
    timeout(WAIT, audit.close()).await.unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();

    let old = sessions(&rotated);
    let new = sessions(&path);
    assert!(
        !old.is_empty() && !new.is_empty(),
        "{} {}",
        old.len(),
        new.len()
    );
    assert_eq!(
        new.last(),
        Some(&TOTAL),
        "the record after the reopen is in the new file"
    );
    let all: Vec<u64> = old.iter().chain(&new).copied().collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "no record written twice");
    assert_eq!(unique, (0..=TOTAL).collect(), "no record lost");
    // Each file holds a contiguous, ordered run: the cut is clean.
    assert!(old.windows(2).all(|w| w[0] < w[1]));
    assert!(new.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(audit.stats().written, TOTAL + 1);
    assert_eq!(audit.stats().dropped, 0);
}

/// logrotate runs with `nocreate`: the new file must exist once the writer has handled the
/// signal, even when no record comes for a while (and `audit tail` must find it).
#[tokio::test]
async fn reopen_creates_the_new_file_before_any_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let (audit, writer) = Audit::to_file(&path, 16).unwrap();
    let task = tokio::spawn(writer.run());
    audit.record("0", event(0));
    flush(&audit).await;
    std::fs::rename(&path, &rotated).unwrap();
    audit.reopen();
    // An idle writer is woken by the reopen; a flush after it proves it has been handled.
    flush(&audit).await;
    assert!(path.exists(), "no new file after the reopen");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(sessions(&rotated), vec![0]);
    assert_eq!(audit.stats().errors, 0);
    timeout(WAIT, audit.close()).await.unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    // The writer is not running yet: a stalled disk, as far as the queue can tell.
    let (audit, writer) = Audit::to_file(&path, 1).unwrap();
    for i in 0..1000 {
        audit.record(&i.to_string(), event(i));
    }
    let stats = audit.stats();
    assert_eq!((stats.queued, stats.dropped, stats.written), (1, 999, 0));
    let task = tokio::spawn(writer.run());
    flush(&audit).await;
    assert_eq!(sessions(&path), vec![0]);
    assert_eq!(audit.stats().written, 1);
    assert_eq!(audit.stats().queued, 0);
    drop(audit);
    // The last handle gone ends the writer.
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_disk_counts_errors_and_never_panics() {
    let full = Path::new("/dev/full");
    assert!(full.exists(), "this test needs Linux /dev/full");
    let (audit, writer) = Audit::to_file(full, 16).unwrap();
    let task = tokio::spawn(writer.run());
    for i in 0..5 {
        audit.record(&i.to_string(), event(i));
        flush(&audit).await;
    }
    let stats = audit.stats();
    assert_eq!((stats.written, stats.errors), (0, 5), "{stats:?}");
    timeout(WAIT, audit.close()).await.unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_removed_directory_counts_errors_and_heals_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let path = logs.join("audit.log");
    let (audit, writer) = Audit::to_file(&path, 16).unwrap();
    let task = tokio::spawn(writer.run());
    audit.record("0", event(0));
    flush(&audit).await;
    assert_eq!(audit.stats().written, 1);

    std::fs::remove_dir_all(&logs).unwrap();
    audit.reopen();
    for i in 1..4 {
        audit.record(&i.to_string(), event(i));
    }
    flush(&audit).await;
    let stats = audit.stats();
    assert_eq!((stats.written, stats.errors), (1, 3), "{stats:?}");

    // The operator recreates the directory: the next batch opens the file again.
    std::fs::create_dir(&logs).unwrap();
    audit.record("4", event(4));
    flush(&audit).await;
    assert_eq!(sessions(&path), vec![4]);
    assert_eq!(audit.stats().written, 2);
    timeout(WAIT, audit.close()).await.unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn close_writes_everything_queued_then_drops_later_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (audit, writer) = Audit::to_file(&path, 4096).unwrap();
    for i in 0..3000 {
        audit.record(&i.to_string(), event(i));
    }
    let task = tokio::spawn(writer.run());
    timeout(WAIT, audit.close()).await.unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(sessions(&path), (0..3000).collect::<Vec<_>>());
    audit.record("late", event(0));
    assert_eq!(audit.stats().dropped, 1);
    // Flush and close on a stopped writer return at once.
    flush(&audit).await;
    timeout(WAIT, audit.close()).await.unwrap();
}

#[tokio::test]
async fn disabled_records_nothing() {
    let audit = Audit::disabled();
    assert!(!audit.is_enabled());
    audit.record("s", event(1));
    audit.reopen();
    flush(&audit).await;
    assert_eq!(audit.stats(), AuditStats::default());
    let (audit, writer) = Audit::open(&crate::config::AuditConfig::default()).unwrap();
    assert!(!audit.is_enabled() && writer.is_none());
}

#[test]
fn an_unopenable_path_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be.
    let err = Audit::to_file(dir.path(), 16).err().unwrap();
    assert!(
        err.to_string().starts_with("cannot open audit file"),
        "{err}"
    );
}

#[test]
fn warnings_are_rate_limited() {
    let limit = RateLimit::new();
    assert!(limit.allow());
    assert!(!limit.allow());
    assert!(!limit.allow());
}
