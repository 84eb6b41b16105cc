//! Stopping Claude Code together with everything it started.
//!
//! Claude Code starts each Bash command in a session of its own, so neither killing the CLI
//! nor signalling the job's process group reaches a command it is running: a test suite, a
//! dev server or a wait loop would run on as an orphan of init, found by nobody, after the
//! step was stopped. The processes below the CLI are found through the parent links in
//! `/proc` while those still lead to it, stopped first (so nothing forks between the walk and
//! the kill), then killed. Signals go through the shell's `kill`, as the job runner sends
//! them: the agent has no `unsafe` code and no crate for it.

use std::process::{Child, Command, Stdio};

use crate::output;

/// Kills `child` and every process below it, and reaps `child`.
pub fn kill(child: &mut Child) {
    let stopped = stop_below(child.id());
    if let Err(error) = child.kill() {
        output::agent(format!("cannot kill Claude Code: {error}"));
    }
    signal("KILL", &stopped);
    if let Err(error) = child.wait() {
        output::agent(format!("cannot reap Claude Code: {error}"));
    }
}

/// Sends SIGSTOP to `root` and to every process below it until a walk of `/proc` finds none
/// it has not stopped; returns what it stopped below `root`. A stopped process forks no more,
/// so the walk ends.
fn stop_below(root: u32) -> Vec<u32> {
    signal("STOP", &[root]);
    let mut stopped: Vec<u32> = Vec::new();
    loop {
        let fresh: Vec<u32> = descendants(root)
            .into_iter()
            .filter(|pid| !stopped.contains(pid))
            .collect();
        if fresh.is_empty() {
            return stopped;
        }
        signal("STOP", &fresh);
        stopped.extend(fresh);
    }
}

/// Every process below `root`, from the parent links in `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent(&stat)?))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, _) in parents.iter().filter(|(_, p)| *p == parent) {
            if !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    found
}

/// The parent pid in a `/proc/<pid>/stat` line. The command name before it is in parentheses
/// and may itself hold spaces and parentheses, so the fields are read after the last `)`.
fn parent(stat: &str) -> Option<u32> {
    let (_, fields) = stat.rsplit_once(')')?;
    // State, then the parent.
    fields.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `signal` to `pids`; ones already gone are fine.
fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let sent = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"signal="$1"; shift; kill -s "$signal" -- "$@" 2>/dev/null"#)
        .arg("mainloop-agent-kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(error) = sent {
        output::agent(format!("cannot send SIG{signal} to {pids:?}: {error}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_after_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent("42 (sh) S 7 42 42 0"), Some(7));
        assert_eq!(parent("42 (a (b) c) R 9 1 1 0"), Some(9));
        assert_eq!(parent("garbage"), None);
    }

    #[test]
    fn a_child_and_its_own_children_are_killed_with_it() {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg("sleep 600 & sleep 600 & wait")
            .spawn()
            .expect("sh");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let below = loop {
            let below = descendants(child.id());
            if below.len() == 2 || std::time::Instant::now() > deadline {
                break below;
            }
            std::thread::yield_now();
        };
        assert_eq!(below.len(), 2, "{below:?}");
        kill(&mut child);
        for pid in below {
            // Killed and reaped by init (this test process is not their parent).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let zombie = stat
                    .rsplit_once(')')
                    .is_some_and(|(_, f)| f.trim_start().starts_with('Z'));
                assert!(
                    zombie || std::time::Instant::now() < deadline,
                    "{pid} still runs"
                );
                if zombie {
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
}
