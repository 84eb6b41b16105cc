//! F7's SSE clients, in a process of their own: the benchmark binary started again with
//! [`URL_ENV`] set. Real clients are browsers on other machines; in the benchmark process
//! their parsing took the CPU the API fans out with. This process connects [`COUNT_ENV`]
//! clients, prints `ready` once all are connected, then, for every thread notice whose text
//! is a number, prints that number when the last client has it. It ends when its standard
//! input closes (the benchmark is done with it) or a client's stream ends.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use mainloop_store::event_kind;
use mainloop_testkit::sse::SseClient;

/// The events URL the clients connect to; its presence makes the binary this process.
pub const URL_ENV: &str = "MAINLOOP_BENCH_SSE_CLIENTS_URL";
/// How many clients to connect.
pub const COUNT_ENV: &str = "MAINLOOP_BENCH_SSE_CLIENTS";

pub fn is_clients() -> bool {
    std::env::var_os(URL_ENV).is_some()
}

pub fn main() -> std::process::ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run()));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sse clients: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let url = std::env::var(URL_ENV)?;
    let count: usize = std::env::var(COUNT_ENV)?.parse()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..count {
        let mut client = SseClient::connect(&url, &[], None).await?;
        let tx = tx.clone();
        readers.spawn(async move {
            while let Ok(Some(event)) = client.next(Duration::from_secs(3600)).await {
                if event.event != event_kind::THREAD_NOTICE {
                    continue;
                }
                let seq = event.json()?["text"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .context("a notice of another run")?;
                if tx.send(seq).is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        });
    }
    drop(tx);
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    // The benchmark closes our stdin when it is done.
    let mut stdin = tokio::io::stdin();
    let mut counts: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some(seq) = got else { return Ok(()) };
                let seen = counts.entry(seq).or_default();
                *seen += 1;
                if *seen == count {
                    counts.remove(&seq);
                    writeln!(stdout, "{seq}")?;
                    stdout.flush()?;
                }
            }
            read = tokio::io::AsyncReadExt::read_u8(&mut stdin) => {
                if read.is_err() {
                    readers.abort_all();
                    return Ok(());
                }
            }
        }
    }
}
