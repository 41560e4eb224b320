//! One grant on disk: `DIR/NAME.json`, mode 0600, written atomically (temporary file in the
//! same directory, write, fsync, rename, fsync of the directory), so a crash leaves either the
//! old or the new grant, never half of one and never none. The refresh token is the only
//! secret; it is held as [`Secret`] in memory and never formatted.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantFile {
    pub name: String,
    /// The `[[oauth.client]]` that obtained it (its token endpoint refreshes it).
    pub client: String,
    pub refresh_token: Secret<String>,
    /// As granted by the provider (or as asked, when it did not say).
    pub scopes: Vec<String>,
    /// RFC 3339, when an administrator authorised it.
    pub obtained: String,
    /// RFC 3339, the last successful refresh.
    pub last_refresh: Option<String>,
    pub state: GrantState,
    /// The provider's error code when it refused the refresh token (`invalid_grant`).
    pub detail: Option<String>,
}

/// Whether a grant can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    Active,
    /// The provider refused the refresh token (consent revoked, password reset, expired):
    /// only `mailgate grant authorize NAME` helps. Logins are refused without asking the
    /// provider again.
    NeedsReauthorization,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::NeedsReauthorization => "needs_reauthorization",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("grant {0:?} is not authorised (no {1})")]
    Missing(String, PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The message is serde's, which names the field, never a value of this file.
    #[error("{path} is not a grant file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "invalid grant name {0:?}: 1 to 64 letters, digits, '.', '-' or '_', not starting with '.'"
    )]
    Name(String),
}

/// What the file holds, field for field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    name: String,
    client: String,
    refresh_token: String,
    #[serde(default)]
    scopes: Vec<String>,
    obtained: String,
    last_refresh: Option<String>,
    state: GrantState,
    #[serde(default)]
    detail: Option<String>,
}

/// Grant names become file names: nothing that could leave the directory or hide the file.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Name(name.to_owned()))
    }
}

pub fn path(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    check_name(name)?;
    Ok(dir.join(format!("{name}.json")))
}

impl GrantFile {
    /// Reads `DIR/NAME.json`; [`Error::Missing`] when there is none.
    pub fn read(dir: &Path, name: &str) -> Result<GrantFile, Error> {
        let path = path(dir, name)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing(name.to_owned(), path));
            }
            Err(source) => return Err(Error::Read { path, source }),
        };
        let wire: Wire = serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.clone(),
            // Line and column only: serde_json's message may quote a value it did not expect.
            message: format!("line {} column {}", e.line(), e.column()),
        })?;
        Ok(GrantFile {
            name: wire.name,
            client: wire.client,
            refresh_token: Secret::new(wire.refresh_token),
            scopes: wire.scopes,
            obtained: wire.obtained,
            last_refresh: wire.last_refresh,
            state: wire.state,
            detail: wire.detail,
        })
    }

    /// Every grant in `dir`, by name; unreadable ones as errors.
    pub fn list(dir: &Path) -> Result<Vec<Result<GrantFile, Error>>, Error> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
                check_name(&name).ok().map(|()| name)
            })
            .collect();
        names.sort();
        Ok(names.iter().map(|n| GrantFile::read(dir, n)).collect())
    }

    /// Replaces `DIR/NAME.json` atomically with this grant, mode 0600 (RFC 6819 5.1.4.1.3:
    /// refresh tokens are stored confidentially). Creates `dir` (0700) if needed.
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        let path = path(dir, &self.name)?;
        let werr = |source| Error::Write {
            path: path.clone(),
            source,
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(werr)?;
        }
        let wire = Wire {
            name: self.name.clone(),
            client: self.client.clone(),
            refresh_token: self.refresh_token.expose().clone(),
            scopes: self.scopes.clone(),
            obtained: self.obtained.clone(),
            last_refresh: self.last_refresh.clone(),
            state: self.state,
            detail: self.detail.clone(),
        };
        let mut body = serde_json::to_vec_pretty(&wire)
            .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
        body.push(b'\n');
        let tmp = dir.join(format!(
            ".{}.json.tmp-{}-{}",
            self.name,
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename itself is durable only once the directory is.
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(werr)
    }
}

/// Takes the grant's refresh lock, `DIR/.NAME.lock` (created 0600), without waiting:
/// `Ok(None)` while another process holds it. Held until the returned file is dropped.
pub fn try_lock(dir: &Path, name: &str) -> Result<Option<std::fs::File>, Error> {
    check_name(name)?;
    let path = dir.join(format!(".{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid open descriptor, owned by `f` for the call.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(Error::Write { path, source: e })
    }
}

/// Now, as RFC 3339 UTC with seconds (the grant file's timestamps).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn grant(token: &str) -> GrantFile {
        GrantFile {
            name: "office".into(),
            client: "m365".into(),
            refresh_token: Secret::new(token.into()),
            scopes: vec!["mail".into()],
            obtained: now_rfc3339(),
            last_refresh: None,
            state: GrantState::Active,
            detail: None,
        }
    }

    #[test]
    fn round_trip_0600_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("grants");
        grant("rt-1").write(&sub).unwrap();
        grant("rt-2").write(&sub).unwrap();
        let read = GrantFile::read(&sub, "office").unwrap();
        assert_eq!(read.refresh_token.expose(), "rt-2");
        let mode = std::fs::metadata(sub.join("office.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&sub).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["office.json"]);
    }

    #[test]
    fn debug_and_errors_never_show_the_refresh_token() {
        let g = grant("rt-SECRET-value");
        assert!(!format!("{g:?}").contains("SECRET"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.json"),
            r#"{"name":"bad","client":"c","refresh_token":7,"obtained":"x","state":"active"}"#,
        )
        .unwrap();
        let e = GrantFile::read(dir.path(), "bad").unwrap_err().to_string();
        assert!(e.contains("not a grant file"), "{e}");
    }

    #[test]
    fn the_refresh_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = try_lock(dir.path(), "office").unwrap().expect("free");
        assert!(try_lock(dir.path(), "office").unwrap().is_none(), "held");
        assert!(
            try_lock(dir.path(), "other").unwrap().is_some(),
            "per grant"
        );
        drop(held);
        assert!(
            try_lock(dir.path(), "office").unwrap().is_some(),
            "released"
        );
    }

    #[test]
    fn names_cannot_leave_the_directory() {
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["office", "crm-2", "a.b_c"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
