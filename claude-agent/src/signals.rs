//! SIGTERM and SIGINT: a job being stopped (Kubernetes sends SIGTERM to the container's first
//! process only, the local runner to the agent) must not leave the Claude Code CLI running on
//! its own, and should still say how it ended.
//!
//! A thread waits for either signal with a small tokio runtime (the only safe way to catch a
//! signal without `unsafe`), then writes a retryable failure as the result (unless the result
//! is already out), kills the CLI and the commands it runs, if any, and exits.

use std::sync::PoisonError;

use tokio::signal::unix::{SignalKind, signal};

use crate::claude::ChildSlot;
use crate::{output, tree};

/// Starts watching. Signals that arrive before the thread gets going are not lost: the
/// handlers are installed before this returns.
///
/// # Errors
/// When the runtime, the handlers or the thread cannot be created.
pub fn watch(slot: ChildSlot) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut term, mut int) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            });
            output::agent(format!("received {name}: stopping"));
            // The result goes out before the CLI is killed: its death wakes the main thread,
            // which would otherwise report a crash instead of the stop.
            output::result(&output::failed(
                format!("the agent was stopped by {name} before the step finished"),
                true,
            ));
            let child = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(mut child) = child {
                tree::kill(&mut child);
            }
            // The step may have finished just before the signal; the exit code follows
            // whichever result went out.
            let code = if output::written_success() == Some(true) {
                0
            } else {
                1
            };
            std::process::exit(code);
        })?;
    Ok(())
}
