//! A load generator that writes down every request: when it was sent and how
//! long its answer took, as the client saw it. wrk only reports the whole
//! run's percentiles; the tail measurement of issue 16 (requests that overlap
//! a usage flush against the others, scripts/bench/tail.sh) needs each one.
//! Like `wrk -t1`: one thread, `connections` keep-alive connections, each
//! sending the next request as soon as the last answer is read, cycling
//! through the keys in `X-API-Key`. The connections share one turn, as
//! wrk's script in scripts/bench/common.sh does: each key is sent once per
//! round. (A turn per connection sent each key 32 times within a
//! millisecond, once per round: bursts that no other benchmark makes.)
//!
//! With a `rate` (requests per second, over all connections), each
//! connection sends on a schedule instead: its share of the rate, the
//! connections staggered. Below what the server can do, the server then has
//! idle moments, as a node in service does; closed-loop, it has none. The
//! schedule runs on tokio's timer, which has millisecond steps, so requests
//! leave in small bursts once a millisecond, and a late request is sent at
//! once, keeping the rate. Latency is counted from when the request went
//! out, as without a rate.
//!
//! Usage: latency_log <host:port> <path> <keys file> <connections> <seconds> <output file> [rate]
//! Output: one line per request, `sent_unix_us latency_us status`.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sample = (u64, u32, u16);

fn usage() -> ! {
    eprintln!("usage: latency_log <host:port> <path> <keys file> <connections> <seconds> <output file> [rate]");
    std::process::exit(2)
}

/// When one connection's requests are due: the next at `next`, then every `every`.
#[derive(Clone, Copy)]
struct Schedule {
    next: Instant,
    every: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path, keys, connections, seconds, output, rest @ ..] = args.as_slice() else {
        usage()
    };
    let rate = match rest {
        [] => None,
        [rate] => Some(
            rate.parse::<f64>()
                .ok()
                .filter(|rate| *rate > 0.0)
                .unwrap_or_else(|| usage()),
        ),
        _ => usage(),
    };
    let keys: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(keys)?
            .split_whitespace()
            .map(String::from)
            .collect(),
    );
    let connections: usize = connections.parse().unwrap_or_else(|_| usage());
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds.parse().unwrap_or_else(|_| usage()));
    let every = rate.map(|rate| Duration::from_secs_f64(connections as f64 / rate));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let turn = Arc::new(AtomicUsize::new(0));
    let samples = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|index| {
                let schedule = every.map(|every| Schedule {
                    next: start + every.mul_f64(index as f64 / connections as f64),
                    every,
                });
                tokio::spawn(connection(
                    addr.clone(),
                    path.clone(),
                    keys.clone(),
                    turn.clone(),
                    until,
                    schedule,
                ))
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(samples)) => all.extend(samples),
                Ok(Err(err)) => eprintln!("a connection failed: {err}"),
                Err(err) => eprintln!("a connection panicked: {err}"),
            }
        }
        all
    });
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    for (sent, latency, status) in &samples {
        writeln!(out, "{sent} {latency} {status}")?;
    }
    out.flush()?;
    eprintln!("{} requests", samples.len());
    Ok(())
}

async fn connection(
    addr: String,
    path: String,
    keys: Arc<Vec<String>>,
    turn: Arc<AtomicUsize>,
    until: Instant,
    mut schedule: Option<Schedule>,
) -> Result<Vec<Sample>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut samples = Vec::with_capacity(200_000);
    while Instant::now() < until {
        if let Some(schedule) = schedule.as_mut() {
            tokio::time::sleep_until(schedule.next.into()).await;
            schedule.next += schedule.every;
        }
        let key = &keys[turn.fetch_add(1, Ordering::Relaxed) % keys.len().max(1)];
        let request = hyper::Request::get(path.as_str())
            .header(hyper::header::HOST, addr.as_str())
            .header("x-api-key", key.as_str())
            .body(Empty::<Bytes>::new())?;
        let sent = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
        let started = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        let latency = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        samples.push((sent, latency, status));
    }
    Ok(samples)
}
