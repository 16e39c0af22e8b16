//! Background work on a thread of its own, below the data plane's priority
//! (issue 16, the tail). Usage flushes, roll-ups, event scans and webhook
//! delivery used to share the main runtime, and a flush of 10,000 keys took
//! up to 0.66 s of a saturated CPU while requests waited behind it
//! (BENCHMARKS.md). Here they run on one thread with a current-thread
//! runtime, at `server.background_priority`; threads it starts (the
//! store's SQLite workers, the blocking pool) inherit that priority, so the
//! database work of a flush waits for the data plane too. The control plane
//! and the listener for other nodes' changes stay at normal priority: a
//! revocation must not wait behind a busy gateway.

use std::future::Future;

use tokio::sync::oneshot;

use crate::config::BackgroundPriority;

/// Runs the future `work` makes on a new thread at `priority`, and resolves
/// when it has finished. `work` is called on that thread, so what it
/// starts is started there.
pub fn run<W, F>(priority: BackgroundPriority, work: W) -> std::io::Result<oneshot::Receiver<()>>
where
    W: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (finished, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("keygate-background".into())
        .spawn(move || {
            if let Err(err) = lower_priority(priority) {
                tracing::warn!(error = %err, ?priority, "background work runs at normal priority");
            }
            runtime.block_on(work());
            let _ = finished.send(());
        })?;
    Ok(done)
}

/// Lowers the calling thread's CPU priority (Linux keeps it per thread).
#[cfg(target_os = "linux")]
fn lower_priority(priority: BackgroundPriority) -> std::io::Result<()> {
    let result = match priority {
        BackgroundPriority::Normal => return Ok(()),
        BackgroundPriority::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid sched_param that outlives the call;
            // pid 0 names the calling thread. Lowering needs no privilege.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }
        }
        // SAFETY: a plain system call without pointers; 0 names the calling thread.
        BackgroundPriority::Low => unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) },
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(priority: BackgroundPriority) -> std::io::Result<()> {
    match priority {
        BackgroundPriority::Normal => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "thread priorities are set on Linux only",
        )),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The policy and nice value of the calling thread, from /proc.
    #[allow(clippy::unwrap_used)]
    fn policy_and_nice() -> (u64, i64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // nice is field 19 and policy field 41 of stat(5); fields[0] is field 3.
        (fields[41 - 3].parse().unwrap(), fields[19 - 3].parse().unwrap())
    }

    #[test]
    fn the_background_thread_runs_at_the_priority_asked_for() {
        for (priority, expected_policy, expected_nice) in [
            (BackgroundPriority::Idle, 5, 0), // SCHED_IDLE
            (BackgroundPriority::Low, 0, 19), // SCHED_OTHER at nice 19
            (BackgroundPriority::Normal, 0, 0),
        ] {
            let (seen_tx, seen) = std::sync::mpsc::channel();
            let done = run(priority, move || async move {
                seen_tx.send(policy_and_nice()).unwrap();
            })
            .unwrap();
            done.blocking_recv().unwrap();
            assert_eq!(seen.recv().unwrap(), (expected_policy, expected_nice), "{priority:?}");
        }
    }
}
