//! One JSON line per data-plane request. Lines go through a bounded channel
//! to a writer thread (tracing-appender's non-blocking writer), so a slow disk
//! never stalls a request; each line is one write, so lines never interleave.
//! The key and the query string are never part of a line. Besides its
//! target, the log can also go to files that rotate daily or hourly
//! (tracing-appender's rolling appender, which also deletes old files).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;

use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use tracing_appender::rolling::{RollingFileAppender, Rotation};

use crate::config::{AccessLogSettings, AccessLogTarget, RotatingFiles};

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
    /// The target, then the rotating files; empty when the log is off.
    writers: Vec<NonBlocking>,
}

/// Keeps the writer threads alive; dropping it flushes what is queued.
pub struct AccessLogGuard(#[allow(dead_code)] Vec<WorkerGuard>);

impl AccessLog {
    pub fn open(settings: &AccessLogSettings) -> std::io::Result<(Self, AccessLogGuard)> {
        let mut sinks: Vec<Box<dyn Write + Send>> = Vec::new();
        match &settings.target {
            AccessLogTarget::Off => {}
            AccessLogTarget::Stdout => sinks.push(Box::new(std::io::stdout())),
            AccessLogTarget::Stderr => sinks.push(Box::new(std::io::stderr())),
            AccessLogTarget::File(path) => {
                sinks.push(Box::new(OpenOptions::new().create(true).append(true).open(path)?));
            }
        }
        if let Some(files) = &settings.rotating {
            sinks.push(Box::new(rotating_files(files)?));
        }
        let (writers, guards) = sinks
            .into_iter()
            .map(|sink| {
                // Not lossy: under a flood the request path waits for the disk rather than drop lines.
                NonBlockingBuilder::default()
                    .lossy(false)
                    .thread_name("keygate-access-log")
                    .finish(sink)
            })
            .unzip();
        Ok((Self { writers }, AccessLogGuard(guards)))
    }

    pub fn enabled(&self) -> bool {
        !self.writers.is_empty()
    }

    pub fn record(&self, entry: &AccessEntry<'_>) {
        if self.writers.is_empty() {
            return;
        }
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        for writer in &self.writers {
            if let Err(err) = writer.clone().write_all(&line) {
                tracing::warn!(error = %err, "access log write failed");
            }
        }
    }
}

/// `access.YYYY-MM-DD.log` (or `access.YYYY-MM-DD-HH.log`) in the folder,
/// keeping the newest `keep` files.
fn rotating_files(files: &RotatingFiles) -> std::io::Result<RollingFileAppender> {
    std::fs::create_dir_all(&files.dir)?;
    RollingFileAppender::builder()
        .rotation(if files.hourly {
            Rotation::HOURLY
        } else {
            Rotation::DAILY
        })
        .filename_prefix("access")
        .filename_suffix("log")
        .max_log_files(files.keep)
        .build(&files.dir)
        .map_err(std::io::Error::other)
}
