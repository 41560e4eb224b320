//! Reading `toml` errors back into key paths and positions, shared by the two file formats
//! (`config/file.rs`, `directory/file.rs`). Pure: no I/O.

/// toml 0.9 keeps the key path of a value-deserialization error private; its `Display` (with no
/// source text attached) is the message followed by a line "in `a.b`". The path is read back
/// from there; `config::file::tests::toml_error_key_path_is_recovered` pins this format.
pub(crate) fn split(e: &toml::de::Error) -> (Option<String>, String) {
    let message = e.message().trim().to_owned();
    let shown = e.to_string();
    let inner = shown
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `").and_then(|l| l.strip_suffix('`')))
        .map(str::to_owned);
    (inner, message)
}

/// Line, column and one-line message of a syntax error in `text`.
pub(crate) fn syntax(text: &str, e: &toml::de::Error) -> (usize, usize, String) {
    let (line, column) = match e.span() {
        Some(span) => line_column(text, span.start),
        None => (1, 1),
    };
    (line, column, e.message().trim().replace('\n', "; "))
}

/// 1-based line and column (in characters) of byte offset `at`.
pub(crate) fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
