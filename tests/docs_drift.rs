//! Do the documented tables say what the code does? The log events (`src/lib.rs`, "What it
//! logs"), the metrics (`src/health.rs`, "Metrics") and the features (`src/lib.rs` and the
//! README, "Features") are read from the code and compared with their tables, both ways: a
//! log event, metric or feature added without its row fails here, and so does a row left
//! behind by one that is gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `src/`.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = read(&path);
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("src"), &mut out);
    out
}

/// The text without comments (line comments, doc comments included), string literals kept.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The string literals of `code`, unescaped enough for messages: `\` before a line break
/// drops the break and the indentation after it, as Rust does.
fn literals(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut literal = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('\n') => {
                        while chars.peek().is_some_and(|c| c.is_whitespace()) {
                            chars.next();
                        }
                    }
                    Some('n') => literal.push('\n'),
                    Some(other) => literal.push(other),
                    None => {}
                },
                '"' => break,
                other => literal.push(other),
            }
        }
        out.push(literal);
    }
    out
}

/// The argument text of every `name!(…)` in `code`, parentheses balanced, strings skipped.
fn macro_calls<'a>(code: &'a str, name: &str) -> Vec<&'a str> {
    let opening = format!("{name}!(");
    let mut calls = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(&opening) {
        let body = &rest[at + opening.len()..];
        let (mut depth, mut in_string, mut escaped) = (1, false, false);
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        calls.push(&body[..end]);
        rest = &body[end..];
    }
    calls
}

/// The rows of the first Markdown table after `heading` in `doc` (lines with their comment
/// prefix removed), as their cells.
fn table_after(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = doc
        .lines()
        .map(|l| {
            let l = l.trim_start();
            l.strip_prefix("//!").unwrap_or(l).trim()
        })
        .collect();
    let start = lines
        .iter()
        .position(|l| *l == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    lines[start..]
        .iter()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its underline
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

fn unticked(cell: &str) -> String {
    cell.trim().trim_matches('`').to_owned()
}

fn assert_same(what: &str, code: &BTreeSet<String>, documented: &BTreeSet<String>) {
    let undocumented: Vec<_> = code.difference(documented).collect();
    let gone: Vec<_> = documented.difference(code).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "{what}: in the code but not documented: {undocumented:#?}\ndocumented but not in the \
         code: {gone:#?}"
    );
}

#[test]
fn every_log_event_has_its_row_and_every_row_its_event() {
    let mut code = BTreeSet::new();
    for (path, text) in sources() {
        let text = code_only(&text);
        for level in ["trace", "debug", "info", "warn", "error"] {
            for call in macro_calls(&text, &format!("tracing::{level}")) {
                let message = literals(call).pop().unwrap_or_else(|| {
                    panic!("{}: a {level} event without a message", path.display())
                });
                assert!(
                    !message.contains('{'),
                    "{}: {message:?} is not constant: put what varies in a field",
                    path.display()
                );
                code.insert(format!("{} {message}", level.to_uppercase()));
            }
        }
    }
    assert!(code.len() > 20, "the scan finds the events: {code:#?}");
    let documented: BTreeSet<String> = table_after(
        &read(&root().join("src/lib.rs")),
        "| level | message | fields |",
    )
    .iter()
    .map(|row| format!("{} {}", row[0], unticked(&row[1])))
    .collect();
    assert_same("log events (src/lib.rs, What it logs)", &code, &documented);
}

#[test]
fn every_metric_has_its_row_and_every_row_its_metric() {
    let health = read(&root().join("src/health.rs"));
    let code: BTreeSet<String> = literals(&code_only(&health))
        .into_iter()
        .filter(|l| l.starts_with("token_refresh_"))
        .collect();
    assert!(code.len() >= 5, "the scan finds the metrics: {code:#?}");
    let documented: BTreeSet<String> = table_after(&health, "# Metrics")
        .iter()
        .map(|row| unticked(&row[0]))
        .collect();
    assert_same("metrics (src/health.rs, Metrics)", &code, &documented);
}

#[test]
fn every_feature_has_its_row_in_the_docs_and_the_readme() {
    let manifest = read(&root().join("Cargo.toml"));
    let features: BTreeSet<String> = manifest
        .lines()
        .skip_while(|l| l.trim() != "[features]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim().to_owned()))
        .filter(|name| !name.starts_with('#') && name != "default")
        .collect();
    assert!(
        features.contains("reqwest"),
        "the scan finds the features: {features:?}"
    );
    for (file, heading) in [("src/lib.rs", "# Features"), ("README.md", "## Features")] {
        let documented: BTreeSet<String> = table_after(&read(&root().join(file)), heading)
            .iter()
            .map(|row| unticked(&row[0]))
            .collect();
        assert_same(&format!("features ({file})"), &features, &documented);
    }
}

/// The scanner itself: a message split over lines, a nested call, a comment.
#[test]
fn the_scanner_reads_what_rust_reads() {
    let code = code_only(
        "tracing::warn!(a = f(x), \"one; \\\n        two\"); // tracing::info!(\"no\")\n\
         tracing::info!(\"(not a paren\")",
    );
    let warns = macro_calls(&code, "tracing::warn");
    assert_eq!(warns.len(), 1);
    assert_eq!(literals(warns[0]), ["one; two"]);
    let infos = macro_calls(&code, "tracing::info");
    assert_eq!(literals(infos[0]), ["(not a paren"]);
}
