//! `keygate keys import FILE --workspace WS` (issue 21): keys that already
//! exist, from another gateway's export or the team's own database, sent
//! to `POST /v1/workspaces/{id}/keys/import` in batches. A row is the key
//! itself (`key`) or only its SHA-256 (`hash`, hex or base64), with `name`,
//! `environment`, `scopes`, `expires_at`, `metadata` and, for a hash, a
//! `hint`. A malformed row is reported with its line number and skipped;
//! nothing else is lost.
//!
//! Re-running adds nothing (the server counts keys it already holds), and
//! an interrupted run resumes: after each batch the line reached is written
//! to `FILE.import-state`, which the next run with the same file and
//! workspace starts after. Plaintext keys are never printed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Rows per call: the server takes at most 1,000.
pub const DEFAULT_BATCH: u16 = 500;
/// A batch is sent early once its rows reach this size as JSON: half of
/// what the server reads in one call (crates/keygate-server/src/http/extract.rs).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// A header row, then one key per row; `scopes` separated by spaces,
    /// `metadata` as a JSON object.
    Csv,
    /// One JSON object per line; `scopes` a list, `metadata` an object.
    Jsonl,
}

impl FileFormat {
    /// From the file's extension: `.csv` is CSV, anything else JSON lines.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Self::Csv,
            _ => Self::Jsonl,
        }
    }
}

/// A CSV row: every column optional but `key` or `hash`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvRow {
    key: Option<SecretString>,
    hash: Option<String>,
    hint: Option<String>,
    name: Option<String>,
    environment: Option<String>,
    scopes: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    metadata: Option<String>,
}

/// A JSON line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    key: Option<SecretString>,
    hash: Option<String>,
    hint: Option<String>,
    name: Option<String>,
    environment: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    metadata: Option<Map<String, Value>>,
}

/// One row as the API takes it, with the line it came from.
struct Row {
    line: u64,
    body: Value,
    /// Its size as JSON, to bound a batch's.
    bytes: usize,
}

impl Row {
    fn new(line: u64, body: Value) -> Self {
        let bytes = body.to_string().len();
        Self { line, body, bytes }
    }
}

/// What both formats give for a row.
struct Fields {
    key: Option<SecretString>,
    hash: Option<String>,
    hint: Option<String>,
    name: Option<String>,
    environment: Option<String>,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    metadata: Option<Map<String, Value>>,
}

impl Fields {
    /// The row as the API takes it; a row without a name is "Imported key".
    fn into_body(self) -> Value {
        let mut body = Map::new();
        if let Some(key) = self.key {
            body.insert("key".into(), key.expose_secret().into());
        }
        let optional = [
            ("hash", self.hash),
            ("hint", self.hint),
            ("environment", self.environment),
        ];
        for (field, value) in optional {
            if let Some(value) = value {
                body.insert(field.into(), value.into());
            }
        }
        let name = self.name.filter(|n| !n.trim().is_empty());
        body.insert("name".into(), name.unwrap_or_else(|| "Imported key".into()).into());
        body.insert("scopes".into(), json!(self.scopes));
        if let Some(at) = self.expires_at {
            body.insert("expires_at".into(), json!(at));
        }
        if let Some(metadata) = self.metadata {
            body.insert("metadata".into(), Value::Object(metadata));
        }
        Value::Object(body)
    }
}

impl CsvRow {
    fn into_body(self) -> Result<Value, String> {
        let metadata = match self.metadata.filter(|m| !m.trim().is_empty()) {
            None => None,
            Some(text) => Some(
                serde_json::from_str::<Map<String, Value>>(&text)
                    .map_err(|_| "metadata: must be a JSON object".to_owned())?,
            ),
        };
        let scopes = self
            .scopes
            .map(|text| text.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Fields {
            key: self.key,
            hash: self.hash,
            hint: self.hint,
            name: self.name,
            environment: self.environment,
            scopes,
            expires_at: self.expires_at,
            metadata,
        }
        .into_body())
    }
}

impl JsonRow {
    fn into_body(self) -> Value {
        Fields {
            key: self.key,
            hash: self.hash,
            hint: self.hint,
            name: self.name,
            environment: self.environment,
            scopes: self.scopes,
            expires_at: self.expires_at,
            metadata: self.metadata,
        }
        .into_body()
    }
}

/// A parser's message with anything quoted in it left out: a malformed row
/// may hold a key, and a key is never printed.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '"' | '`' => {
                quoted = !quoted;
                if quoted {
                    out.push_str("\"...\"");
                }
            }
            _ if !quoted => out.push(c),
            _ => {}
        }
    }
    out
}

/// The rows of a file, each with its line, or the line's problem.
type ReadRow = Result<Row, (u64, String)>;

/// Reads rows in order, telling how far into the file it is (bytes).
trait RowSource {
    fn next_row(&mut self) -> Option<ReadRow>;
    fn position(&self) -> u64;
}

struct CsvSource {
    reader: csv::Reader<File>,
    record: csv::StringRecord,
    headers: csv::StringRecord,
}

impl RowSource for CsvSource {
    fn next_row(&mut self) -> Option<ReadRow> {
        let line = self.reader.position().line() + 1;
        match self.reader.read_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                let line = self.record.position().map_or(line, |p| p.line());
                let row = self
                    .record
                    .deserialize::<CsvRow>(Some(&self.headers))
                    .map_err(|e| without_quoted(&csv_message(&e)))
                    .and_then(CsvRow::into_body);
                Some(row.map(|body| Row::new(line, body)).map_err(|m| (line, m)))
            }
            Err(e) => Some(Err((line, without_quoted(&csv_message(&e))))),
        }
    }

    fn position(&self) -> u64 {
        self.reader.position().byte()
    }
}

/// A CSV error without its position prefix: the line is reported apart.
fn csv_message(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(field) => format!("column {}: {}", field + 1, err.kind()),
            None => err.kind().to_string(),
        },
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} columns where the header has {expected_len}")
        }
        _ => "not valid CSV".into(),
    }
}

struct JsonLines {
    reader: BufReader<File>,
    line: u64,
    position: u64,
    buffer: String,
}

impl RowSource for JsonLines {
    fn next_row(&mut self) -> Option<ReadRow> {
        loop {
            self.buffer.clear();
            let read = match self.reader.read_line(&mut self.buffer) {
                Ok(0) => return None,
                Ok(read) => read,
                Err(e) => return Some(Err((self.line + 1, format!("cannot read: {e}")))),
            };
            self.line += 1;
            self.position += read as u64;
            if self.buffer.trim().is_empty() {
                continue;
            }
            let row = serde_json::from_str::<JsonRow>(&self.buffer)
                .map(JsonRow::into_body)
                .map_err(|e| (self.line, without_quoted(&e.to_string())));
            return Some(row.map(|body| Row::new(self.line, body)));
        }
    }

    fn position(&self) -> u64 {
        self.position
    }
}

fn open_source(path: &Path, format: FileFormat) -> Result<Box<dyn RowSource>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(match format {
        FileFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(file);
            let headers = reader
                .headers()
                .map_err(|e| format!("{}: the header row is not valid CSV: {e}", path.display()))?
                .clone();
            Box::new(CsvSource {
                reader,
                record: csv::StringRecord::new(),
                headers,
            })
        }
        FileFormat::Jsonl => Box::new(JsonLines {
            reader: BufReader::new(file),
            line: 0,
            position: 0,
            buffer: String::new(),
        }),
    })
}

/// What a run has done so far; also what `FILE.import-state` keeps.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    workspace: String,
    /// The file's size when the run began: a changed file starts over.
    file_len: u64,
    /// Every row up to this line has been sent.
    line: u64,
    imported: u64,
    legacy: u64,
    existing: u64,
    refused: u64,
}

/// A row the run did not import.
#[derive(Debug, Serialize)]
struct Refusal {
    line: u64,
    message: String,
}

fn state_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".import-state");
    PathBuf::from(name)
}

/// The progress of an earlier, interrupted run of this file into this
/// workspace, if there is one.
fn resumed(state: &Path, workspace: &str, file_len: u64) -> Option<Progress> {
    let text = std::fs::read_to_string(state).ok()?;
    let progress: Progress = serde_json::from_str(&text).ok()?;
    (progress.workspace == workspace && progress.file_len == file_len).then_some(progress)
}

fn bar(file_len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(file_len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {percent:>3}% {msg} (ETA {eta})") {
        bar.set_style(style);
    }
    bar
}

/// What a call of `keys import` was asked to do.
pub struct ImportJob<'a> {
    pub path: &'a Path,
    pub workspace: &'a str,
    pub format: FileFormat,
    pub legacy: bool,
    pub batch: usize,
    /// Ignore the state of an earlier run.
    pub restart: bool,
    pub json: bool,
}

fn add_answer(answer: &Value, rows: &[Row], progress: &mut Progress, refusals: &mut Vec<Refusal>, bar: &ProgressBar) {
    let count = |field: &str| answer[field].as_u64().unwrap_or(0);
    progress.imported += count("imported");
    progress.legacy += count("legacy");
    progress.existing += count("existing");
    for refused in answer["refused"].as_array().into_iter().flatten() {
        let index = refused["row"].as_u64().unwrap_or(0) as usize;
        let line = rows.get(index).map_or(0, |row| row.line);
        let message = format!(
            "{}: {}",
            refused["field"].as_str().unwrap_or("row"),
            refused["message"].as_str().unwrap_or("refused")
        );
        refuse(Refusal { line, message }, progress, refusals, bar);
    }
}

fn refuse(refusal: Refusal, progress: &mut Progress, refusals: &mut Vec<Refusal>, bar: &ProgressBar) {
    bar.suspend(|| eprintln!("line {}: {}", refusal.line, refusal.message));
    progress.refused += 1;
    refusals.push(refusal);
}

/// Reads the file and hands each batch's request body to `send`, which
/// answers with the server's reply.
pub async fn run<F, Fut>(job: ImportJob<'_>, mut send: F) -> Result<(), String>
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let file_len = std::fs::metadata(job.path)
        .map_err(|e| format!("cannot read {}: {e}", job.path.display()))?
        .len();
    let state = state_path(job.path);
    let mut progress = match resumed(&state, job.workspace, file_len).filter(|_| !job.restart) {
        Some(progress) => {
            eprintln!(
                "Resuming after line {} ({} keys imported before).",
                progress.line, progress.imported
            );
            progress
        }
        None => Progress {
            workspace: job.workspace.to_owned(),
            file_len,
            ..Progress::default()
        },
    };
    let skip_to = progress.line;
    let mut source = open_source(job.path, job.format)?;
    let bar = bar(file_len);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut refusals = Vec::new();
    let mut rows: Vec<Row> = Vec::with_capacity(job.batch);
    let mut batch_bytes = 0;
    let mut legacy_verified = true;
    loop {
        let next = source.next_row();
        let done = next.is_none();
        match next {
            Some(Ok(row)) if row.line <= skip_to => continue,
            Some(Err((line, _))) if line <= skip_to => continue,
            Some(Ok(row)) => {
                batch_bytes += row.bytes;
                rows.push(row);
            }
            Some(Err((line, message))) => refuse(Refusal { line, message }, &mut progress, &mut refusals, &bar),
            None => {}
        }
        let full = rows.len() >= job.batch || batch_bytes >= MAX_BATCH_BYTES;
        if full || (done && !rows.is_empty()) {
            let keys: Vec<Value> = rows.iter().map(|row| row.body.clone()).collect();
            let answer = send(json!({"legacy": job.legacy, "keys": keys})).await?;
            legacy_verified &= answer["legacy_keys_verified"].as_bool().unwrap_or(true);
            add_answer(&answer, &rows, &mut progress, &mut refusals, &bar);
            sent += rows.len() as u64;
            progress.line = rows.last().map_or(progress.line, |row| row.line);
            save_state(&state, &progress);
            rows.clear();
            batch_bytes = 0;
            let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{} keys, {rate:.0} keys/s", progress.imported));
        }
        bar.set_position(source.position());
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&state);
    let elapsed = started.elapsed().as_secs_f64();
    summarize(&job, &progress, &refusals, elapsed, sent, legacy_verified)
}

fn save_state(state: &Path, progress: &Progress) {
    if let Ok(text) = serde_json::to_string(progress) {
        // Without the state a re-run is still right, only slower: not fatal.
        let _ = std::fs::write(state, text);
    }
}

fn summarize(
    job: &ImportJob<'_>,
    progress: &Progress,
    refusals: &[Refusal],
    elapsed: f64,
    sent: u64,
    legacy_verified: bool,
) -> Result<(), String> {
    let rate = sent as f64 / elapsed.max(1e-3);
    if job.json {
        let summary = json!({
            "workspace": job.workspace,
            "imported": progress.imported,
            "legacy": progress.legacy,
            "existing": progress.existing,
            "refused": refusals,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "keys_per_second": rate.round(),
        });
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else {
        println!(
            "Imported {} into {} ({} legacy); {} there already; {} refused. {elapsed:.1} s, {rate:.0} keys/s.",
            counted(progress.imported, "key"),
            job.workspace,
            progress.legacy,
            progress.existing,
            counted(progress.refused, "row"),
        );
    }
    if progress.legacy > 0 && !legacy_verified {
        eprintln!("Note: legacy keys work once the nodes run with keys.legacy = true (README, \"Importing keys\").");
    }
    match progress.refused {
        0 => Ok(()),
        n => Err(format!(
            "{} refused (see above); every other row was imported",
            counted(n, "row")
        )),
    }
}

/// `1 key`, `2 keys`.
fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_left_out_of_messages() {
        assert_eq!(
            without_quoted(r#"invalid type: string "sk_live_secret", expected a sequence"#),
            r#"invalid type: string "...", expected a sequence"#
        );
        assert_eq!(without_quoted("unknown field `secret`"), "unknown field \"...\"");
    }

    #[test]
    fn a_csv_row_becomes_an_api_row() {
        let row = CsvRow {
            key: Some(SecretString::from("sk_live_abcdef12")),
            hash: None,
            hint: None,
            name: None,
            environment: Some("test".into()),
            scopes: Some("read  write".into()),
            expires_at: None,
            metadata: Some(r#"{"plan": "pro"}"#.into()),
        };
        assert_eq!(
            row.into_body().unwrap(),
            json!({"key": "sk_live_abcdef12", "environment": "test", "name": "Imported key",
                   "scopes": ["read", "write"], "metadata": {"plan": "pro"}})
        );
    }

    #[test]
    fn csv_metadata_that_is_not_an_object_is_refused() {
        let row = CsvRow {
            key: None,
            hash: Some("ab".repeat(32)),
            hint: None,
            name: Some("n".into()),
            environment: None,
            scopes: None,
            expires_at: None,
            metadata: Some("[1]".into()),
        };
        assert_eq!(row.into_body().unwrap_err(), "metadata: must be a JSON object");
    }

    #[test]
    fn the_format_follows_the_extension() {
        assert_eq!(FileFormat::of(Path::new("keys.CSV")), FileFormat::Csv);
        assert_eq!(FileFormat::of(Path::new("keys.jsonl")), FileFormat::Jsonl);
        assert_eq!(FileFormat::of(Path::new("keys")), FileFormat::Jsonl);
    }
}
