//! Stage: audit, sink layer. [`Record`]s in (from any task, never waiting), JSON lines out to a
//! file or stdout.
//!
//! ```text
//! Audit::record ──try_send──▶ bounded queue ──▶ Writer::run ──▶ batch ──write+flush──▶ file
//!   (full: dropped += 1)                          (reopen flag checked before every write)
//! ```
//!
//! - [`Audit::record`] stamps the record and `try_send`s it. A full queue (the writer is slow
//!   or stuck) drops the record and counts it in [`AuditStats::dropped`]: the proxy loop never
//!   waits for the disk.
//! - [`Writer::run`] takes everything queued, serializes it into one buffer and writes it when
//!   the queue is empty (or every [`BATCH_BYTES`]), so a busy proxy makes few syscalls and an
//!   idle one has every record on disk at once.
//! - A failed write (disk full, EIO) or a failed open (directory removed) counts the records it
//!   held in [`AuditStats::errors`], logs a warning at most every [`WARN_EVERY`], and retries
//!   with the next batch: the sink heals when the disk does. Nothing here panics.
//! - [`Audit::reopen`] (SIGUSR1, after logrotate renamed the file) closes the file and opens the
//!   path again at once, creating it. Records are never lost across it: the ones written before
//!   are in the renamed file, the rest in the new one.
//! - [`Audit::close`] writes everything queued so far and stops the writer (shutdown).
//!
//! Must not: block the caller of `record`, panic, or create directories other than at start-up
//! (a log directory removed at run time is the operator's to notice, not ours to paper over).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::record::{Event, Record, Reload};

/// See [`crate::config::DEFAULT_AUDIT_QUEUE`].
pub const DEFAULT_QUEUE: usize = crate::config::DEFAULT_AUDIT_QUEUE;
/// See [`crate::config::MAX_AUDIT_QUEUE`].
pub const MAX_QUEUE: usize = crate::config::MAX_AUDIT_QUEUE;
/// Write a batch once it reaches this size even if more is queued (one `write` of 64 KiB).
pub const BATCH_BYTES: usize = 64 * 1024;
/// At most one warning per cause in this interval, each with the running totals.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why the audit sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open audit file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot create audit directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
}

/// Handle for writing audit records. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct Audit {
    /// `None`: auditing is disabled and every call is a no-op.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    capacity: usize,
    state: Arc<State>,
}

/// Shared between the handles and the writer; the writer holds no sender, so the queue closes
/// when the last [`Audit`] is dropped.
struct State {
    written: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    reopen: AtomicBool,
    /// Wakes an idle writer for a reopen.
    wake: Notify,
    drop_warning: RateLimit,
    error_warning: RateLimit,
}

// Nearly every message is a record: boxing it would cost an allocation per record to save
// bytes in the rare flush and close messages.
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// Boxed: a record is ~250 bytes, every queue slot would be that large otherwise.
    Record(Box<Record>),
    /// Write everything before this, then answer.
    Flush(oneshot::Sender<()>),
    /// Write everything queued, stop accepting, answer, end the writer.
    Close(oneshot::Sender<()>),
}

/// Counters for the metrics module (`mailgate_audit_*_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records written and flushed.
    pub written: u64,
    /// Records refused because the queue was full (or the writer had stopped).
    pub dropped: u64,
    /// Records lost to a failed open or write.
    pub errors: u64,
    /// Records waiting in the queue now.
    pub queued: usize,
}

impl Audit {
    /// Appends to `path`, creating it (mode 0640: user names and addresses are personal data)
    /// and its parent directory. Fails if the file cannot be opened, so a bad path stops start-up
    /// instead of silently losing the audit trail. Nothing is written until the [`Writer`] runs.
    pub fn to_file(path: &Path, queue: usize) -> Result<(Audit, Writer), Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let file = open_std(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        let (audit, rx, state) = Self::channel(queue);
        let writer = Writer::new(
            rx,
            state,
            Target::File {
                path: path.to_owned(),
                file: Some(tokio::fs::File::from_std(file)),
            },
        );
        Ok((audit, writer))
    }

    /// Writes to the process's standard output (journald under systemd).
    pub fn stdout(queue: usize) -> (Audit, Writer) {
        let (audit, rx, state) = Self::channel(queue);
        let writer = Writer::new(rx, state, Target::Stdout(tokio::io::stdout()));
        (audit, writer)
    }

    /// Records nothing.
    pub fn disabled() -> Audit {
        Audit { inner: None }
    }

    /// The sink `config` asks for. The writer is `None` when auditing is disabled.
    pub fn open(config: &crate::config::AuditConfig) -> Result<(Audit, Option<Writer>), Error> {
        use crate::config::AuditSink;
        match &config.sink {
            AuditSink::Disabled => Ok((Audit::disabled(), None)),
            AuditSink::Stdout => {
                let (audit, writer) = Audit::stdout(config.queue);
                Ok((audit, Some(writer)))
            }
            AuditSink::File(path) => {
                let (audit, writer) = Audit::to_file(path, config.queue)?;
                Ok((audit, Some(writer)))
            }
        }
    }

    /// What [`Audit::open`] would fail on, without creating or writing anything: the file
    /// (or, when it does not exist yet, its directory) must be writable by this process.
    pub fn check(config: &crate::config::AuditConfig) -> Result<(), Error> {
        match &config.sink {
            crate::config::AuditSink::File(path) => {
                crate::writable::creatable(path).map_err(|source| Error::Open {
                    path: path.clone(),
                    source,
                })
            }
            crate::config::AuditSink::Disabled | crate::config::AuditSink::Stdout => Ok(()),
        }
    }

    fn channel(queue: usize) -> (Audit, mpsc::Receiver<Msg>, Arc<State>) {
        let capacity = queue.clamp(1, MAX_QUEUE);
        let (tx, rx) = mpsc::channel(capacity);
        let state = Arc::new(State {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            wake: Notify::new(),
            drop_warning: RateLimit::new(),
            error_warning: RateLimit::new(),
        });
        let inner = Inner {
            tx,
            capacity,
            state: state.clone(),
        };
        (
            Audit {
                inner: Some(Arc::new(inner)),
            },
            rx,
            state,
        )
    }

    /// True unless [`Audit::disabled`].
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Records `event` for `session`, stamped now. Never waits: when the queue is full the record
    /// is dropped and counted. Use [`Audit::reload`] for `reload` events.
    pub fn record(&self, session: &str, event: Event) {
        if self.inner.is_some() {
            self.submit(Record::now(Some(session), event));
        }
    }

    /// Records a `grant` event (`session: null`: it belongs to no session). Never waits.
    pub fn grant(&self, change: super::GrantChange) {
        if self.inner.is_some() {
            self.submit(Record::now(None, Event::Grant(change)));
        }
    }

    /// Records a `reload` event (`session: null`). Never waits, like [`Audit::record`].
    pub fn reload(&self, reload: Reload) {
        if self.inner.is_some() {
            self.submit(Record::now(None, Event::Reload(reload)));
        }
    }

    fn submit(&self, record: Record) {
        let Some(inner) = &self.inner else { return };
        if inner.tx.try_send(Msg::Record(Box::new(record))).is_err() {
            let state = &inner.state;
            let dropped = state.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if state.drop_warning.allow() {
                tracing::warn!(
                    dropped_total = dropped,
                    queue = inner.capacity,
                    "audit queue full or writer stopped; audit records dropped"
                );
            }
        }
    }

    /// Close and reopen the file before the next write (SIGUSR1 after logrotate). Returns at
    /// once; a no-op for stdout and when disabled.
    pub fn reopen(&self) {
        if let Some(inner) = &self.inner {
            inner.state.reopen.store(true, Ordering::Release);
            inner.state.wake.notify_one();
        }
    }

    /// Waits until every record recorded before this call has been written (or counted as an
    /// error). Waits for queue space first, so bound it with a timeout if the disk may hang.
    pub async fn flush(&self) {
        self.send_and_wait(Msg::Flush).await;
    }

    /// Writes every record queued so far, then stops the writer; later records are counted as
    /// dropped. For shutdown: call it after the last session ended, under a timeout.
    pub async fn close(&self) {
        self.send_and_wait(Msg::Close).await;
    }

    async fn send_and_wait(&self, msg: fn(oneshot::Sender<()>) -> Msg) {
        let Some(inner) = &self.inner else { return };
        let (ack, done) = oneshot::channel();
        if inner.tx.send(msg(ack)).await.is_ok() {
            // An error means the writer is gone; nothing more will be written either way.
            let _ = done.await;
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> AuditStats {
        let Some(inner) = &self.inner else {
            return AuditStats::default();
        };
        let s = &inner.state;
        AuditStats {
            written: s.written.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            queued: inner.capacity.saturating_sub(inner.tx.capacity()),
        }
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.is_enabled())
            .field("stats", &self.stats())
            .finish()
    }
}

/// The task that writes queued records. Spawn [`Writer::run`]; it ends after [`Audit::close`]
/// or when every [`Audit`] handle is gone, having written everything queued.
#[must_use = "records are only written while Writer::run is polled; unspawned, they are dropped"]
pub struct Writer {
    rx: mpsc::Receiver<Msg>,
    state: Arc<State>,
    target: Target,
    /// Serialized records not yet written.
    batch: Vec<u8>,
    batch_records: u64,
    /// A failed write may have left half a line; start the next write on a fresh line.
    broken_line: bool,
}

enum Target {
    File {
        path: PathBuf,
        /// `None` after a failed write or open; opened again before the next write.
        file: Option<tokio::fs::File>,
    },
    Stdout(tokio::io::Stdout),
}

impl Writer {
    fn new(rx: mpsc::Receiver<Msg>, state: Arc<State>, target: Target) -> Writer {
        Writer {
            rx,
            state,
            target,
            batch: Vec::with_capacity(BATCH_BYTES),
            batch_records: 0,
            broken_line: false,
        }
    }

    pub async fn run(mut self) {
        let mut closers = Vec::new();
        loop {
            let msg = tokio::select! {
                biased;
                msg = self.rx.recv() => msg,
                () = self.state.wake.notified() => {
                    // Idle reopen: nothing to write, but do not keep the old file open.
                    self.write_batch().await;
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            self.handle(msg, &mut closers).await;
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg, &mut closers).await;
            }
            // The queue is empty: everything taken so far goes to disk now.
            self.write_batch().await;
        }
        self.write_batch().await;
        for ack in closers {
            let _ = ack.send(());
        }
    }

    async fn handle(&mut self, msg: Msg, closers: &mut Vec<oneshot::Sender<()>>) {
        match msg {
            Msg::Record(record) => {
                match record.write_json(&mut self.batch) {
                    Ok(()) => self.batch_records += 1,
                    Err(e) => self.failed(1, &e),
                }
                if self.batch.len() >= BATCH_BYTES {
                    self.write_batch().await;
                }
            }
            Msg::Flush(ack) => {
                self.write_batch().await;
                let _ = ack.send(());
            }
            Msg::Close(ack) => {
                // Refuse new records; the ones already queued are still received and written.
                self.rx.close();
                closers.push(ack);
            }
        }
    }

    /// Reopens if asked, then writes and flushes the batch, counting its records as written or
    /// as errors.
    async fn write_batch(&mut self) {
        if self.state.reopen.swap(false, Ordering::AcqRel)
            && let Target::File { path, file } = &mut self.target
        {
            // Everything before the reopen was flushed with its batch; dropping closes it. The
            // new file is created now, not at the next record: logrotate runs with `nocreate`
            // and `audit tail` expects the file. A failed open is retried by the next write.
            *file = None;
            match open_tokio(path).await {
                Ok(opened) => *file = Some(opened),
                Err(e) => self.failed(0, &e),
            }
        }
        if self.batch_records == 0 {
            self.batch.clear();
            return;
        }
        let records = std::mem::take(&mut self.batch_records);
        let result = write_target(&mut self.target, &self.batch, self.broken_line).await;
        self.batch.clear();
        match result {
            Ok(()) => {
                self.broken_line = false;
                self.state.written.fetch_add(records, Ordering::Relaxed);
            }
            Err(e) => {
                self.broken_line = true;
                if let Target::File { file, .. } = &mut self.target {
                    *file = None;
                }
                self.failed(records, &e);
            }
        }
    }

    fn failed(&self, records: u64, error: &dyn std::fmt::Display) {
        let errors = self.state.errors.fetch_add(records, Ordering::Relaxed) + records;
        if self.state.error_warning.allow() {
            let target = match &self.target {
                Target::File { path, .. } => path.display().to_string(),
                Target::Stdout(_) => "stdout".to_owned(),
            };
            tracing::warn!(
                %target,
                %error,
                errors_total = errors,
                "audit records could not be written"
            );
        }
    }
}

async fn write_target(target: &mut Target, batch: &[u8], broken_line: bool) -> io::Result<()> {
    let newline: &[u8] = if broken_line { b"\n" } else { b"" };
    match target {
        Target::File { path, file } => {
            let file = match file {
                Some(file) => file,
                None => file.insert(open_tokio(path).await?),
            };
            file.write_all(newline).await?;
            file.write_all(batch).await?;
            // tokio's File reports a write's outcome only on the next operation: flush waits
            // for it, so the counters are right.
            file.flush().await
        }
        Target::Stdout(out) => {
            out.write_all(newline).await?;
            out.write_all(batch).await?;
            out.flush().await
        }
    }
}

fn open_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true).mode(0o640);
    options
}

fn open_std(path: &Path) -> io::Result<std::fs::File> {
    open_options().open(path)
}

async fn open_tokio(path: &Path) -> io::Result<tokio::fs::File> {
    let options = tokio::fs::OpenOptions::from(open_options());
    options.open(path).await
}

/// Lets one event through per [`WARN_EVERY`], from any thread, without a lock.
struct RateLimit {
    epoch: Instant,
    /// Milliseconds since `epoch` before which nothing passes.
    next: AtomicU64,
}

impl RateLimit {
    fn new() -> RateLimit {
        RateLimit {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next.load(Ordering::Relaxed);
        now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests;
