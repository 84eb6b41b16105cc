//! `mainloop`: parses the command line, sets up logging and the shutdown signal, and hands
//! over to the command. Everything else lives in the crates.

use clap::Parser;
use mainloop::config::{Cli, Command, LogFormat};
use mainloop::{dev, probe, run};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Dev(args) => dev::run(args, shutdown_on_signals()).await,
        Command::Serve(args) => run::serve(args, shutdown_on_signals()).await,
        Command::Worker(args) => run::worker(args, shutdown_on_signals()).await,
        // Neither holds state a signal could lose (each migration is one transaction): a
        // signal ends them the default way.
        Command::Migrate(args) => run::migrate(args).await,
        Command::Mcp => run::mcp().await,
        Command::Openapi => run::openapi(),
        Command::Probe(args) => probe::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("mainloop: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs as `RUST_LOG` says, beside the SQL statement counter (which asks for its own
/// events whatever the log filter: see `metrics::sql`).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,temporalio_sdk_core=warn,sqlx=warn"));
    let registry = tracing_subscriber::registry().with(mainloop::metrics::sql::layer());
    match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init(),
    }
}

/// Cancelled on SIGINT or SIGTERM; a second signal ends the process at once.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot listen for shutdown signals");
            return;
        };
        for round in 0.. {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if round == 0 {
                tracing::info!("shutting down (signal again to stop at once)");
                cancel.cancel();
            } else {
                eprintln!("mainloop: stopped without finishing in-flight work");
                std::process::exit(130);
            }
        }
    });
    token
}
