//! The command line and environment: where the spec, the workspace and the Claude Code CLI
//! are. Flags win over environment variables, which win over the defaults.

use std::path::PathBuf;

use mainloop_agent::protocol::SPEC_ENV;

/// Environment variable naming the directory the repository is cloned into.
pub const WORKSPACE_ENV: &str = "MAINLOOP_AGENT_WORKSPACE";
/// Environment variable naming the Claude Code CLI binary.
pub const CLAUDE_BIN_ENV: &str = "MAINLOOP_CLAUDE_BIN";

const DEFAULT_WORKSPACE: &str = "/workspace";
const DEFAULT_CLAUDE_BIN: &str = "claude";

pub const USAGE: &str = "\
usage: mainloop-agent [--spec <file>] [--workspace <dir>] [--claude <path>]

Runs one step (plan, implement, fix, feedback) of a mainloop task with the Claude Code CLI.

  --spec <file>       the AgentSpec as JSON (default: the MAINLOOP_AGENT_SPEC variable)
  --workspace <dir>   where to clone the repository (MAINLOOP_AGENT_WORKSPACE, /workspace)
  --claude <path>     the Claude Code CLI (MAINLOOP_CLAUDE_BIN, `claude` on PATH)

Secrets come only from the environment: GITHUB_TOKEN for git over HTTPS, and
ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN (plus ANTHROPIC_BASE_URL) for the CLI.
Every stdout line is a JSON event; the last one is the result.";

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// The spec's JSON text (read from the file or the environment).
    pub spec_json: String,
    pub workspace: PathBuf,
    pub claude_bin: PathBuf,
}

#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Args),
    Help,
}

/// Parses `argv` (without the program name) against `env`.
///
/// # Errors
/// A message for the user: an unknown flag, a flag without its value, an unreadable spec file
/// or no spec at all.
pub fn parse(
    argv: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed, String> {
    let mut spec_file = None;
    let mut workspace = None;
    let mut claude = None;
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--spec" => &mut spec_file,
            "--workspace" => &mut workspace,
            "--claude" => &mut claude,
            _ => return Err(format!("unknown argument `{arg}`\n\n{USAGE}")),
        };
        let value = match inline {
            Some(value) => value,
            None => argv
                .next()
                .ok_or_else(|| format!("`{flag}` needs a value\n\n{USAGE}"))?,
        };
        *slot = Some(value);
    }

    let spec_json = match spec_file {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|error| format!("cannot read the spec file {path}: {error}"))?,
        None => env(SPEC_ENV)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                format!("no spec: set {SPEC_ENV} to the AgentSpec JSON or pass --spec <file>")
            })?,
    };
    let workspace = workspace
        .or_else(|| env(WORKSPACE_ENV).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_WORKSPACE.to_owned());
    let claude_bin = claude
        .or_else(|| env(CLAUDE_BIN_ENV).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_CLAUDE_BIN.to_owned());
    Ok(Parsed::Run(Args {
        spec_json,
        workspace: PathBuf::from(workspace),
        claude_bin: PathBuf::from(claude_bin),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_defaults() {
        let env = |name: &str| match name {
            SPEC_ENV => Some("{}".to_owned()),
            WORKSPACE_ENV => Some("/env/ws".to_owned()),
            _ => None,
        };
        let Ok(Parsed::Run(parsed)) = parse(args(&["--claude=/bin/cc"]), env) else {
            panic!("expected a run");
        };
        assert_eq!(parsed.spec_json, "{}");
        assert_eq!(parsed.workspace, PathBuf::from("/env/ws"));
        assert_eq!(parsed.claude_bin, PathBuf::from("/bin/cc"));

        let Ok(Parsed::Run(parsed)) = parse(args(&["--workspace", "/flag/ws"]), env) else {
            panic!("expected a run");
        };
        assert_eq!(parsed.workspace, PathBuf::from("/flag/ws"));
        assert_eq!(parsed.claude_bin, PathBuf::from("claude"));
    }

    #[test]
    fn bad_invocations_are_explained() {
        let none = |_: &str| None;
        assert!(parse(args(&[]), none).unwrap_err().contains(SPEC_ENV));
        assert!(
            parse(args(&["--spec"]), none)
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse(args(&["--bogus"]), none)
                .unwrap_err()
                .contains("unknown argument")
        );
        assert!(
            parse(args(&["--spec", "/does/not/exist.json"]), none)
                .unwrap_err()
                .contains("cannot read the spec file")
        );
        assert_eq!(parse(args(&["--help"]), none), Ok(Parsed::Help));
    }
}
