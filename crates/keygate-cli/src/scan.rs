//! `keygate keys scan PATH...` (issue 20): finds this deployment's keys in
//! files, as a pre-commit hook or a CI step would. It walks the tree as git
//! sees it (`.gitignore` respected, `.git` skipped, dotfiles such as `.env`
//! read), skips binary files, and keeps the matches of the deployment's
//! detection regex whose checksum verifies. With `--check` it asks the server
//! which of them are live, sending their SHA-256 hashes only
//! (`POST /v1/keys/lookup`). A found key is only ever printed masked.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use keygate_core::KeyFormat;
use regex::bytes::Regex;
use serde::Serialize;
use serde_json::{json, Value};

/// Files larger than this are not read: keys live in source and config, not
/// in multi-megabyte dumps.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// A NUL byte in the first this many bytes marks a file as binary, as git does.
const BINARY_SNIFF_BYTES: usize = 8000;

/// One key found in one place.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    /// `kg_live_AbCd...wxyz`.
    pub masked: String,
    pub environment: String,
    /// With `--check`: `active`, `revoked`, `expired`, `deleted`, or `unknown`
    /// (not a key of this deployment the caller can see).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip)]
    hash: String,
}

impl Finding {
    /// Fails a pre-commit hook: live for the server, or (unchecked) possibly live.
    fn fails_the_run(&self) -> bool {
        self.status.as_deref().is_none_or(|status| status == "active")
    }
}

/// What a scan saw.
#[derive(Debug, Default, Serialize)]
pub struct Scan {
    pub files_scanned: u64,
    pub files_skipped: u64,
    /// Matches of the regex whose checksum did not verify: near misses, not keys.
    pub not_keys: u64,
    pub findings: Vec<Finding>,
}

/// The keys of `format` in the files under `paths`.
pub fn scan(paths: &[PathBuf], format: &KeyFormat, progress: &ProgressBar) -> Result<Scan, String> {
    let pattern = format!(r"\b(?:{})\b", format.detection_regex());
    let regex = Regex::new(&pattern).map_err(|e| format!("the detection regex does not compile: {e}"))?;
    let (first, rest) = paths.split_first().ok_or("name at least one path")?;
    let mut walk = ignore::WalkBuilder::new(first);
    for path in rest {
        walk.add(path);
    }
    // Dotfiles are where keys leak most (`.env`); git's own folder is not.
    walk.hidden(false)
        .require_git(false)
        .filter_entry(|entry| entry.file_name() != ".git");
    let mut scan = Scan::default();
    for entry in walk.build() {
        let entry = entry.map_err(|e| e.to_string())?;
        if !entry.file_type().is_some_and(|kind| kind.is_file()) {
            continue;
        }
        match read_text(entry.path()) {
            Some(bytes) => {
                scan.files_scanned += 1;
                find_keys(entry.path(), &bytes, &regex, format, &mut scan);
            }
            None => scan.files_skipped += 1,
        }
        progress.set_message(format!("{} files", scan.files_scanned));
        progress.tick();
    }
    Ok(scan)
}

/// The file's bytes, unless it is too large, unreadable or binary.
fn read_text(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_FILE_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes).ok()?;
    let head = &bytes[..bytes.len().min(BINARY_SNIFF_BYTES)];
    (!head.contains(&0)).then_some(bytes)
}

fn find_keys(path: &Path, bytes: &[u8], regex: &Regex, format: &KeyFormat, scan: &mut Scan) {
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        for found in regex.find_iter(line) {
            let Ok(text) = std::str::from_utf8(found.as_bytes()) else {
                continue;
            };
            match format.parse(text) {
                Ok(parsed) => scan.findings.push(Finding {
                    path: path.to_owned(),
                    line: index + 1,
                    masked: parsed.hint(),
                    environment: parsed.environment().to_owned(),
                    status: None,
                    hash: parsed.hash().to_hex(),
                }),
                Err(_) => scan.not_keys += 1,
            }
        }
    }
}

/// Sets each finding's status from the server's answer to its hash.
pub fn apply_statuses(scan: &mut Scan, found: &[Value]) {
    let statuses: HashMap<&str, &str> = found
        .iter()
        .filter_map(|key| Some((key["hash"].as_str()?, key["status"].as_str()?)))
        .collect();
    for finding in &mut scan.findings {
        let status = statuses.get(finding.hash.as_str()).copied().unwrap_or("unknown");
        finding.status = Some(status.to_owned());
    }
}

/// The distinct hashes to ask the server about.
pub fn hashes(scan: &Scan) -> Vec<String> {
    let mut hashes: Vec<String> = scan.findings.iter().map(|f| f.hash.clone()).collect();
    hashes.sort();
    hashes.dedup();
    hashes
}

/// A spinner on stderr, drawn only when stderr is a terminal (never in CI
/// logs or pipes).
pub fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} scanning {msg}") {
        bar.set_style(style);
    }
    bar
}

/// Prints the findings; `Err` (a non-zero exit) when one fails the run.
pub fn report(scan: &Scan, json: bool, checked: bool) -> Result<(), String> {
    if json {
        println!("{}", serde_json::to_string_pretty(scan).unwrap_or_default());
    } else {
        for finding in &scan.findings {
            let status = finding.status.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            println!(
                "{}:{}: {}{status}",
                finding.path.display(),
                finding.line,
                finding.masked
            );
        }
        println!(
            "{} key{} found in {} files ({} skipped as binary or large).",
            scan.findings.len(),
            if scan.findings.len() == 1 { "" } else { "s" },
            scan.files_scanned,
            scan.files_skipped
        );
    }
    let failing = scan.findings.iter().filter(|f| f.fails_the_run()).count();
    match (failing, checked) {
        (0, _) => Ok(()),
        (n, true) => Err(format!("{n} live key(s) found: revoke or rotate them")),
        (n, false) => Err(format!(
            "{n} key(s) with a valid checksum found (run with --check to ask the server which are live)"
        )),
    }
}

/// The body of one lookup call.
pub fn lookup_body(hashes: &[String]) -> Value {
    json!({ "hashes": hashes })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn format() -> KeyFormat {
        KeyFormat::new("kg", &["live".into(), "test".into()]).unwrap()
    }

    #[test]
    fn keys_are_found_by_line_with_their_checksum_checked_and_never_kept_whole() {
        let format = format();
        let key = format.generate("live", &mut rand::thread_rng()).unwrap();
        let key = key.expose();
        let mut broken = key.to_owned();
        broken.replace_range(10..11, if &key[10..11] == "a" { "b" } else { "a" });
        let text = format!("first\nAPI_KEY={key}\nnot_{key}x\n{broken}\n\"{key}\",\n");
        let regex = Regex::new(&format!(r"\b(?:{})\b", format.detection_regex())).unwrap();
        let mut scan = Scan::default();
        find_keys(Path::new("a.env"), text.as_bytes(), &regex, &format, &mut scan);
        let lines: Vec<usize> = scan.findings.iter().map(|f| f.line).collect();
        assert_eq!(
            lines,
            [2, 5],
            "inside words is not a key; the broken one fails its checksum"
        );
        assert_eq!(scan.not_keys, 1);
        let printed = format!("{:?}", scan.findings);
        assert!(!printed.contains(&key[8..]), "{printed}");
        let answer = [json!({"hash": scan.findings[0].hash, "status": "revoked"})];
        apply_statuses(&mut scan, &answer);
        let statuses: Vec<_> = scan.findings.iter().map(|f| f.status.clone().unwrap()).collect();
        assert_eq!(statuses, ["revoked", "revoked"], "the same key twice");
        assert_eq!(hashes(&scan).len(), 1);
        assert!(report(&scan, true, true).is_ok(), "a revoked key fails nothing");
    }
}
