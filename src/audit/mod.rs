//! Stage: audit. The operator's record of every connection, login decision, session end and
//! reload: typed events in, JSON lines out, and the reader behind `mailgate audit tail`.
//!
//! - [`record`]: the event types and the one serializer (docs/audit.md).
//! - [`sink`]: [`Audit`], the non-blocking handle sessions record through, and its writer task
//!   (bounded queue, file or stdout, reopen on SIGUSR1, counters for metrics).
//! - [`tail`]: reading, filtering and following an audit file across rotation.
//!
//! Must not: wait on the proxy's hot path, panic, or ever hold a password or token.

pub mod record;
pub mod sink;
pub mod tail;

pub use record::{
    Auth, Connect, End, Event, GrantChange, Record, Reload, ReloadOutcome, ReloadSource,
    SessionEnd, TlsVersion, Verdict,
};
pub use sink::{Audit, AuditStats, Writer};
