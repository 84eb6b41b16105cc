//! A throwaway PostgreSQL server from the distribution's binaries: `initdb` into a temporary
//! directory, then `postgres` on a free loopback port. As root (CI containers) it runs as the
//! `postgres` system user, since PostgreSQL refuses to run as root.

#![allow(unsafe_code)] // getpwnam/geteuid: looking up the unprivileged user to run as.

use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::ports::free_port;
use crate::process::{ChildProcess, Output};

/// A running PostgreSQL server with trust authentication on 127.0.0.1; stopped when dropped.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<ChildProcess>,
}

impl PgServer {
    /// Initialises a cluster and starts it.
    pub async fn start() -> Result<PgServer> {
        let bin = find_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("mainloop-pg-").tempdir()?;
        let run_as = if is_root() {
            let ids = lookup_user("postgres").context(
                "running as root, PostgreSQL needs the `postgres` user (installed with the \
                 postgresql package; run scripts/setup)",
            )?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))?;
            Some(ids)
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--no-instructions", "--locale", "C"]);
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().await.context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut server = PgServer {
            bin,
            port: free_port()?,
            dir,
            run_as,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<()> {
        let data = self.dir.path().join("data");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Durability is not under test here; speed is welcome.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"]);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let log = self.dir.path().join("postgres.log");
        let child =
            ChildProcess::spawn("postgres", &mut command, Output::File(log), libc::SIGQUIT)?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "PostgreSQL exited during start-up ({status}):\n{}",
                    child.log_tail(20)
                );
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", "postgres"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL was not ready within 60 s");
            }
            // Readiness is only observable by asking; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a fresh database and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("database names here are [A-Za-z0-9_]+, not {name:?}");
        }
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .await?;
        Ok(self.url(name))
    }

    /// Runs one SQL command with psql and returns its output.
    pub async fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args([
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ])
            .output()
            .await
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (fast shutdown: open transactions are rolled back).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGINT)?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Kills the server as a crash would (immediate shutdown, recovery on next start).
    pub async fn crash(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGQUIT)?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port and data.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("PostgreSQL is already running");
        }
        self.spawn().await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(lines))
            .unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Immediate shutdown lets the postmaster take its backends and shared memory down;
        // a bare SIGKILL would leave both behind.
        if let Some(mut child) = self.child.take()
            && child.signal(libc::SIGQUIT).is_ok()
        {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The directory holding `initdb` and `postgres`: `$PG_BIN`, the newest
/// `/usr/lib/postgresql/*/bin` (Debian), or `PATH`.
pub fn find_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Ok(dir);
            }
        }
    }
    bail!("PostgreSQL's server binaries were not found: run scripts/setup, or set PG_BIN")
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of a system user.
fn lookup_user(name: &str) -> Result<(u32, u32)> {
    let cname = CString::new(name)?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy out the two ids
    // at once, and nothing else in this process calls getpwnam concurrently in a way that
    // matters for these plain integers.
    let entry = unsafe { libc::getpwnam(cname.as_ptr()) };
    if entry.is_null() {
        bail!("no user named {name}");
    }
    // SAFETY: entry is non-null and points at a valid passwd record (see above).
    let ids = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(ids)
}
