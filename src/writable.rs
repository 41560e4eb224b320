//! Could this process create a file here? Answered without creating anything, for the start-up
//! checks (`crate::startup`): `mailgate check` must refuse a config whose self-signed
//! certificate or audit file `mailgate run` could not write, yet never write itself.

use std::io;
use std::path::Path;

/// `Ok` when `path` exists and opens for appending, or when it could be created: its nearest
/// existing ancestor is a directory this process may write into (`access(2)`, which also says
/// `EROFS` on a read-only mount, as systemd's `ProtectSystem=strict` makes `/etc`).
pub fn creatable(path: &Path) -> io::Result<()> {
    if path.exists() {
        // Opening for append writes nothing and changes no timestamp.
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop);
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        match std::fs::metadata(d) {
            Ok(meta) if meta.is_dir() => return may_write_into(d),
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => dir = d.parent(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn may_write_into(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; access only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creatable_paths() {
        let dir = tempfile::tempdir().unwrap();
        assert!(creatable(&dir.path().join("new.pem")).is_ok());
        assert!(creatable(&dir.path().join("a/b/new.pem")).is_ok());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(creatable(&file).is_ok());
        // A regular file where a directory should be.
        let e = creatable(&file.join("new.pem")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        // A directory where the file should be: appending to it fails.
        assert!(creatable(dir.path()).is_err());
    }
}
