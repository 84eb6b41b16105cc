//! `mainloop-agent`: runs one step of a mainloop task with the Claude Code CLI in a fresh
//! clone and reports on stdout, one JSON event per line, ending with exactly one result.
//! See `claude-agent/README.md` for the spec, the environment and the protocol.
//!
//! The modules below belong to the binary only; the library (`mainloop_agent`) is just the
//! wire protocol and the CLI's result line, so the job runners that depend on it pull in
//! nothing of the agent.

mod args;
mod claude;
mod git;
mod output;
mod prompt;
mod run;
mod signals;
mod tree;

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;

use mainloop_agent::protocol::Outcome;

fn main() -> ExitCode {
    let argv = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned());
    let args = match args::parse(argv, |name| std::env::var(name).ok()) {
        Ok(args::Parsed::Run(args)) => args,
        Ok(args::Parsed::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            output::result(&output::failed(message, false));
            return ExitCode::FAILURE;
        }
    };

    let slot = claude::ChildSlot::default();
    if let Err(error) = signals::watch(slot.clone()) {
        output::agent(format!("cannot watch for SIGTERM: {error}"));
    }
    // Whatever goes wrong, the runner gets its result line.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| run::run(&args, &slot)))
        .unwrap_or_else(|_| {
            // A panic while Claude Code ran would otherwise leave it running on its own.
            let child = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(mut child) = child {
                tree::kill(&mut child);
            }
            output::failed("the agent crashed (see its stderr)", true)
        });
    let success = !matches!(result.outcome, Outcome::Failed { .. });
    output::result(&result);
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
