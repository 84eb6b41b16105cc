//! The release build the images ship (Dockerfile's builder stage runs the same cargo command):
//! it compiles, the web app is embedded in the one binary (served with no `frontend/build` on
//! disk), and `mainloop probe`, the images' health check, tells a healthy server from a dead
//! one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_testkit::ports::free_port;
use mainloop_testkit::postgres::PgServer;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

/// `target/` of this build: the test binary is `target/debug/deps/release-…`.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("the test binary is not under target/<profile>/deps")
}

/// Variables cargo sets for the test it runs. Build scripts (ring's, for one) rerun when such
/// a variable changes, so a nested build that inherited them would rebuild half the tree
/// whenever it alternates with a build from a shell, or the checkout moves.
fn set_by_cargo_for_this_test(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// Builds the release binaries as the Dockerfile does, in the environment a shell would give
/// it. A target directory of its own: the cargo running this test holds the lock on the one it
/// builds in.
async fn build_release() -> Result<PathBuf> {
    let target = target_dir()?.join("dist");
    let mut command = Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_this_test) {
            command.env_remove(name);
        }
    }
    let status = command
        .args(["build", "--locked", "--release", "-p", "mainloop", "-p"])
        .arg("mainloop-agent")
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .await
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let release = target.join("release");
    for binary in ["mainloop", "mainloop-agent"] {
        if !release.join(binary).is_file() {
            bail!("the release build made no {binary}");
        }
    }
    Ok(release.join("mainloop"))
}

async fn probe(mainloop: &Path, url: &str) -> Result<bool> {
    let status = Command::new(mainloop)
        .args(["probe", "--timeout", "2s", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    Ok(status.success())
}

#[tokio::test]
async fn the_release_binary_embeds_the_web_app_and_probes_its_health() -> Result<()> {
    let mainloop = build_release().await?;
    // Nowhere near the repository: the web app can only come from inside the binary.
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        !probe(&mainloop, &format!("{base}/healthz")).await?,
        "the probe passed with nothing listening"
    );

    // serve needs PostgreSQL: separate processes cannot share SQLite's wake-ups.
    let postgres = PgServer::start().await?;
    let database_url = postgres.create_database("release").await?;
    let mut serve = Command::new(&mainloop)
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("MAINLOOP_LISTEN", format!("127.0.0.1:{port}"))
        .env("MAINLOOP_AUTH", "token")
        .env("MAINLOOP_AUTH_TOKEN", "a-token-of-at-least-16-chars")
        // No Temporal here: serve connects in the background and answers meanwhile.
        .env("TEMPORAL_ADDRESS", "127.0.0.1:1")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    let deadline = tokio::time::Instant::now() + WAIT;
    while !probe(&mainloop, &format!("{base}/healthz")).await? {
        if let Some(status) = serve.try_wait()? {
            bail!("mainloop serve exited ({status})");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("mainloop serve was not healthy within {WAIT:?}");
        }
        // Health is only observable by asking; ask again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not ready without Temporal, and the probe says so.
    assert!(!probe(&mainloop, &format!("{base}/readyz")).await?);

    let page = reqwest::get(format!("{base}/")).await?;
    assert_eq!(page.status(), 200);
    let html = page.text().await?;
    assert!(
        html.contains("<div") && html.contains("_app/immutable"),
        "not the built web app: {html:.300}"
    );
    serve.start_kill()?;
    serve.wait().await?;
    Ok(())
}
