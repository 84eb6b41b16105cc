//! Child processes that never outlive their parent: every child gets `PR_SET_PDEATHSIG`, so
//! a test runner that is killed, or a `mainloop dev` that crashes, takes its servers with it.
//! Output goes to a log file that a failing test can print.

#![allow(unsafe_code)] // pre_exec: the one place a child's death signal can be set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

/// A running child process, killed (SIGKILL) when dropped.
pub struct ChildProcess {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

/// Where a child's stdout and stderr go.
pub enum Output {
    /// Appended to this file (created if missing).
    File(PathBuf),
    /// Shared with the parent.
    Inherit,
    Null,
}

impl ChildProcess {
    /// Spawns `command` as `name`. `death_signal` is what the child receives if this process
    /// (strictly: the spawning thread) dies first.
    pub fn spawn(
        name: &str,
        command: &mut Command,
        output: Output,
        death_signal: libc::c_int,
    ) -> Result<ChildProcess> {
        let log = match &output {
            Output::File(path) => Some(path.clone()),
            _ => None,
        };
        match output {
            Output::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening log {}", path.display()))?;
                let err = file.try_clone()?;
                command.stdout(Stdio::from(file)).stderr(Stdio::from(err));
            }
            Output::Inherit => {
                command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
            Output::Null => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        command.stdin(Stdio::null()).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last `lines` lines of the child's log, for test failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        match &self.log {
            Some(path) => tail(path, lines),
            None => String::new(),
        }
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} has already exited", self.name))?;
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) -> Result<()> {
        if self.child.id().is_some() {
            self.child.start_kill()?;
        }
        self.child.wait().await?;
        Ok(())
    }

    /// Asks the child to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub async fn terminate(&mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        if self.child.id().is_some() {
            self.signal(libc::SIGTERM)?;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                tracing::warn!(name = %self.name, "did not stop within {grace:?}; killing it");
                self.child.start_kill()?;
                Ok(self.child.wait().await?)
            }
        }
    }

    /// Waits for the child to exit on its own.
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// Whether the child has exited (and with what), without waiting.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}
