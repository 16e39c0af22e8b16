//! One JSON line per data-plane request. Lines go through a bounded channel
//! to a writer thread (tracing-appender's non-blocking writer), so a slow disk
//! never stalls a request; each line is one write, so lines never interleave.
//! The key and the query string are never part of a line.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;

use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::config::AccessLogTarget;

#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub method: &'a str,
    /// The path only: the query string may hold anything, keys included.
    pub path: &'a str,
    pub status: u16,
    /// Until the response head was sent; a streamed body may last longer.
    pub latency_ms: f64,
    pub key_id: Option<&'a str>,
    pub workspace_id: Option<&'a str>,
    pub client_ip: IpAddr,
}

#[derive(Clone, Default)]
pub struct AccessLog {
    writer: Option<NonBlocking>,
}

/// Keeps the writer thread alive; dropping it flushes what is queued.
pub struct AccessLogGuard(#[allow(dead_code)] Option<WorkerGuard>);

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> std::io::Result<(Self, AccessLogGuard)> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok((Self::default(), AccessLogGuard(None))),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        // Not lossy: under a flood the request path waits for the disk rather than drop lines.
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("keygate-access-log")
            .finish(sink);
        Ok((Self { writer: Some(writer) }, AccessLogGuard(Some(guard))))
    }

    pub fn enabled(&self) -> bool {
        self.writer.is_some()
    }

    pub fn record(&self, entry: &AccessEntry<'_>) {
        let Some(writer) = &self.writer else { return };
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(err) = writer.clone().write_all(&line) {
            tracing::warn!(error = %err, "access log write failed");
        }
    }
}
