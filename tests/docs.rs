//! The documentation is complete in a clone: every relative link in README.md and docs/*.md
//! resolves to a file inside the repository (and its `#anchor` to a heading there), and no
//! file refers to documents outside the repository (the product contract or notes the
//! developers kept beside it).

// Test code: a failed `expect` is how this test reports what it could not read.
#![allow(clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("canonical repository root")
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// Link targets of markdown `[text](target)` outside fenced code blocks and code spans.
fn links(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: `[x](y)` inside backticks is an example, not a link.
        let text: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find([')', ' ']).unwrap_or(rest.len());
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

/// GitHub's heading anchors: lowercase, punctuation other than `-` and `_` dropped, spaces to
/// `-`, repeats suffixed `-1`, `-2`; plus explicit `id="..."` anchors.
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            let title = heading.trim_start_matches('#').trim();
            let slug: String = title
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            let n = seen.entry(slug.clone()).or_insert(0);
            out.insert(if *n == 0 {
                slug.clone()
            } else {
                format!("{slug}-{n}")
            });
            *n += 1;
        }
        let mut rest = line;
        while let Some(at) = rest.find("id=\"") {
            rest = &rest[at + 4..];
            let end = rest.find('"').unwrap_or(rest.len());
            out.insert(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_readme_and_docs_resolves_inside_the_repository() {
    let root = root();
    let mut broken = Vec::new();
    for doc in documents() {
        let markdown = std::fs::read_to_string(&doc).expect("read markdown");
        let name = doc
            .strip_prefix(&root)
            .unwrap_or(&doc)
            .display()
            .to_string();
        for target in links(&markdown) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.clone()
            } else {
                let joined = doc.parent().expect("document directory").join(path);
                match joined.canonicalize() {
                    Ok(file) if file.starts_with(&root) => file,
                    Ok(_) => {
                        broken.push(format!("{name}: {target} (outside the repository)"));
                        continue;
                    }
                    Err(_) => {
                        broken.push(format!("{name}: {target} (no such file)"));
                        continue;
                    }
                }
            };
            if let Some(anchor) = anchor {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn no_file_refers_to_documents_outside_the_repository() {
    let root = root();
    // Every file a clone has, plus new ones not yet committed (git's ignore rules drop
    // target/ and node_modules/).
    let out = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .current_dir(&root)
        .output()
        .expect("run git ls-files");
    assert!(out.status.success(), "git ls-files: {out:?}");
    // Built from pieces, so this file does not match itself.
    let outside = [
        format!("../{}", "shared"),
        format!("{}/notes", "shared"),
        format!("{}.md", concat!("SP", "EC")),
        format!("{}.md", "STYLE"),
    ];
    let contract = concat!("SP", "EC");
    let mut found = Vec::new();
    for path in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path).into_owned();
        let Ok(text) = std::fs::read_to_string(root.join(&path)) else {
            continue; // binary, or deleted but not yet committed
        };
        for (n, line) in text.lines().enumerate() {
            let cites_outside = outside.iter().any(|needle| line.contains(needle.as_str()));
            // The contract's name as a word, as in "... step 3" citations (not `AF_UNSPEC`).
            let cites_contract = line.match_indices(contract).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + contract.len()..].chars().next();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if cites_outside || cites_contract {
                found.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to documents outside the repository (write what the reader needs into \
         README.md or docs/ and point there):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_link_checker_sees_links_and_headings() {
    let markdown = "# A title\n## `[x]`: b / c\n[one](docs/a.md#a-title) `[no](x)`\n\
                    ```\n[no](y)\n```\n<a id=\"z\"></a> [two](#z)\n";
    assert_eq!(links(markdown), ["docs/a.md#a-title", "#z"]);
    let found = anchors(markdown);
    assert!(found.contains("a-title") && found.contains("x-b--c") && found.contains("z"));
}
