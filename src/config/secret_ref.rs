//! Secret references in the config: `KEY = "env:NAME"` (looked up in the environment) or
//! `KEY_file = "path"` (read, trimmed; relative to the config file). A secret value written
//! into the config itself is refused, and never echoed in the error.

use std::path::Path;

use crate::secret::Secret;

/// Resolve `value` (`env:NAME`) or `file`, named `key` and `file_key` in errors. `Ok(None)`
/// when neither is given; `Err((key, message))` for the first problem.
pub fn resolve(
    key: &str,
    value: Option<&str>,
    file_key: &str,
    file: Option<&str>,
    base_dir: &Path,
) -> Result<Option<Secret<String>>, (String, String)> {
    match (value, file) {
        (Some(_), Some(_)) => Err((
            key.to_owned(),
            format!("give {key} or {file_key}, not both"),
        )),
        (Some(value), None) => match value.strip_prefix("env:") {
            Some(name) => match std::env::var(name) {
                Ok(s) if !s.is_empty() => Ok(Some(Secret::new(s))),
                _ => Err((
                    key.to_owned(),
                    format!("environment variable {name:?} is unset or empty"),
                )),
            },
            // The value is not echoed: it may be the secret itself.
            None => Err((
                key.to_owned(),
                format!(
                    "must be \"env:NAME\"; put the secret in the environment or use \
                     {file_key}, never in the config file"
                ),
            )),
        },
        (None, Some(file)) => {
            let path = base_dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => Ok(Some(Secret::new(s.trim().to_owned()))),
                Ok(_) => Err((file_key.to_owned(), format!("{} is empty", path.display()))),
                Err(e) => Err((
                    file_key.to_owned(),
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        (None, None) => Ok(None),
    }
}
