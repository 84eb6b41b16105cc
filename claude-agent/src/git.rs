//! Everything the agent does with git: cloning, branches, committing and pushing, and telling
//! a failure that a retry can fix (the network) from one it cannot (no such repository,
//! credentials refused).
//!
//! The GitHub token never touches the URL, the disk or a command line: it goes to git as an
//! `http.<origin>.extraHeader` through `GIT_CONFIG_*` environment variables of the git
//! processes we start (readable only by our own user, unlike argv), and is scoped to the clone
//! URL's origin so a redirect elsewhere does not receive it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

/// A git command that failed.
#[derive(Debug, Clone)]
pub struct GitError {
    /// The git subcommand and its arguments, for the message.
    pub command: String,
    pub stderr: String,
}

impl GitError {
    /// Whether running the job again could succeed. Missing repositories and branches and
    /// refused credentials stay that way; everything else (DNS, timeouts, 5xx, a push race)
    /// may not.
    pub fn retryable(&self) -> bool {
        const PERMANENT: [&str; 14] = [
            "repository not found",
            "does not appear to be a git repository",
            "not found in upstream origin",
            "authentication failed",
            "could not read username",
            "could not read password",
            "terminal prompts disabled",
            "invalid username or password",
            "returned error: 401",
            "returned error: 403",
            "returned error: 404",
            "permission to",
            "write access to repository not granted",
            "access denied",
        ];
        let stderr = self.stderr.to_lowercase();
        !PERMANENT.iter().any(|pattern| stderr.contains(pattern))
    }
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stderr = self.stderr.trim();
        if stderr.is_empty() {
            write!(f, "`git {}` failed", self.command)
        } else {
            write!(f, "`git {}` failed: {}", self.command, stderr)
        }
    }
}

/// Runs git with the agent's settings: no prompts, English messages (they are classified),
/// the auth header when there is a token, and none of the repository's hooks or fsmonitor (the
/// model could have written them, and they would run with the token in their environment).
#[derive(Clone)]
pub struct Git {
    auth_env: Vec<(String, String)>,
}

impl std::fmt::Debug for Git {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Git")
            .field("authenticated", &!self.auth_env.is_empty())
            .finish()
    }
}

impl Git {
    /// `token` is sent only to `clone_url`'s origin and only over HTTP(S).
    pub fn new(clone_url: &str, token: Option<&str>) -> Git {
        let auth_env = match (token.filter(|t| !t.is_empty()), http_origin(clone_url)) {
            (Some(token), Some(origin)) => {
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("x-access-token:{token}"));
                vec![
                    ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
                    (
                        "GIT_CONFIG_KEY_0".to_owned(),
                        format!("http.{origin}.extraHeader"),
                    ),
                    (
                        "GIT_CONFIG_VALUE_0".to_owned(),
                        format!("Authorization: Basic {basic}"),
                    ),
                ]
            }
            _ => Vec::new(),
        };
        Git { auth_env }
    }

    fn command(&self, dir: Option<&Path>, args: &[&str]) -> Command {
        let mut command = Command::new("git");
        command
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
                "-c",
                "commit.gpgsign=false",
                // A stalled transfer fails instead of hanging until the job's deadline.
                "-c",
                "http.lowSpeedLimit=1000",
                "-c",
                "http.lowSpeedTime=60",
            ])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env("LC_ALL", "C")
            .env("LANGUAGE", "C")
            .envs(self.auth_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command
    }

    /// Runs `git args` in `dir` and returns its trimmed stdout.
    ///
    /// # Errors
    /// When git cannot be started or exits non-zero.
    pub fn run(&self, dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
        let output = self.command(dir, args).output().map_err(|error| GitError {
            command: args.join(" "),
            stderr: format!("cannot run git: {error}"),
        })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(GitError {
                command: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }

    /// Runs a command whose exit status is the answer (`diff --quiet`, `rev-parse --verify`):
    /// `Ok(true)` for 0, `Ok(false)` for 1.
    ///
    /// # Errors
    /// When git cannot be started or fails otherwise.
    pub fn test(&self, dir: &Path, args: &[&str]) -> Result<bool, GitError> {
        let output = self
            .command(Some(dir), args)
            .output()
            .map_err(|error| GitError {
                command: args.join(" "),
                stderr: format!("cannot run git: {error}"),
            })?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(GitError {
                command: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }),
        }
    }
}

/// A clone of the task's repository.
#[derive(Debug)]
pub struct Repo {
    pub git: Git,
    pub dir: PathBuf,
    pub url: String,
}

impl Repo {
    /// Clones `url` into `dir`: only the tip of `branch` when `shallow` (planning reads, never
    /// pushes), otherwise every branch without checking one out yet.
    ///
    /// # Errors
    /// The failed clone, with its stderr.
    pub fn clone(git: Git, url: &str, dir: &Path, shallow: Option<&str>) -> Result<Repo, GitError> {
        let target = dir.to_string_lossy().into_owned();
        git.run(None, &strs(&args::clone(url, &target, shallow)))?;
        Ok(Repo {
            git,
            dir: dir.to_owned(),
            url: url.to_owned(),
        })
    }

    pub fn run(&self, args: &[&str]) -> Result<String, GitError> {
        self.git.run(Some(&self.dir), args)
    }

    /// Sets the commit identity in the clone only, so neither the model's commits nor ours
    /// depend on (or change) a global git config.
    pub fn set_identity(&self, name: &str, email: &str) -> Result<(), GitError> {
        self.run(&strs(&args::config("user.name", name)))?;
        self.run(&strs(&args::config("user.email", email)))?;
        Ok(())
    }

    /// Whether `origin/{branch}` exists (the clone saw the branch on the remote).
    pub fn remote_branch_exists(&self, branch: &str) -> Result<bool, GitError> {
        self.git
            .test(&self.dir, &strs(&args::remote_branch_exists(branch)))
    }

    /// Checks out `branch` at `start`, creating or resetting the local branch.
    pub fn checkout(&self, branch: &str, start: &str, track: bool) -> Result<(), GitError> {
        self.run(&strs(&args::checkout(branch, start, track)?))?;
        Ok(())
    }

    pub fn head(&self) -> Result<String, GitError> {
        self.run(&["rev-parse", "HEAD"])
    }

    /// Commits between `from` (exclusive) and HEAD.
    pub fn count_commits(&self, from: &str) -> Result<u64, GitError> {
        let count = self.run(&strs(&args::count_commits(from)))?;
        count.parse().map_err(|_| GitError {
            command: format!("rev-list --count {from}..HEAD"),
            stderr: format!("unexpected output `{count}`"),
        })
    }

    /// Stages everything and commits it with `message` if anything is staged. Returns whether
    /// a commit was made.
    pub fn commit_all(&self, message: &str) -> Result<bool, GitError> {
        self.run(&["add", "--all"])?;
        let clean = self.git.test(&self.dir, &["diff", "--cached", "--quiet"])?;
        if clean {
            return Ok(false);
        }
        self.run(&["commit", "--quiet", "--no-verify", "--message", message])?;
        Ok(true)
    }

    /// Pushes HEAD to `branch` on the clone URL itself rather than `origin`, which the model
    /// could have repointed.
    pub fn push(&self, branch: &str) -> Result<(), GitError> {
        self.run(&strs(&args::push(&self.url, branch)))?;
        Ok(())
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The argument lists of the git commands that carry values from the spec (URL, branches,
/// identity). Each such value is either the argument of an option that takes one (`--branch`,
/// `-B`) or comes after `--` / `--end-of-options`, so a value that starts with `-` can never
/// be read as an option, whatever got past the spec's validation.
pub(crate) mod args {
    use super::GitError;

    fn owned(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    pub fn clone(url: &str, target: &str, shallow: Option<&str>) -> Vec<String> {
        let mut args = owned(&["clone", "--no-tags"]);
        match shallow {
            Some(branch) => {
                args.extend(owned(&[
                    "--depth",
                    "1",
                    "--single-branch",
                    "--branch",
                    branch,
                ]));
            }
            None => args.push("--no-checkout".to_owned()),
        }
        args.extend(owned(&["--", url, target]));
        args
    }

    pub fn config(key: &str, value: &str) -> Vec<String> {
        owned(&["config", "--end-of-options", key, value])
    }

    pub fn remote_branch_exists(branch: &str) -> Vec<String> {
        let reference = format!("refs/remotes/origin/{branch}");
        owned(&[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &reference,
        ])
    }

    /// `checkout -B branch start --`: the trailing `--` says no paths follow. `checkout`
    /// takes `--end-of-options` as the start of paths, so the start point itself must not
    /// look like an option.
    pub fn checkout(branch: &str, start: &str, track: bool) -> Result<Vec<String>, GitError> {
        if start.starts_with('-') {
            return Err(GitError {
                command: "checkout".to_owned(),
                stderr: format!("refusing start point {start:?}: it looks like an option"),
            });
        }
        let track = if track { "--track" } else { "--no-track" };
        Ok(owned(&[
            "checkout", "--quiet", track, "-B", branch, start, "--",
        ]))
    }

    pub fn count_commits(from: &str) -> Vec<String> {
        let range = format!("{from}..HEAD");
        owned(&["rev-list", "--count", "--end-of-options", &range])
    }

    pub fn push(url: &str, branch: &str) -> Vec<String> {
        let refspec = format!("HEAD:refs/heads/{branch}");
        owned(&["push", "--quiet", "--no-verify", "--", url, &refspec])
    }
}

/// `scheme://host[:port]/` of an HTTP(S) URL, the prefix git matches `http.<url>.*` against.
fn http_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    // Credentials in the URL are the caller's business; the header goes to the host.
    let host = authority.rsplit('@').next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{host}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_scoped_to_the_http_origin() {
        assert_eq!(
            http_origin("https://github.com/acme/widgets.git").as_deref(),
            Some("https://github.com/")
        );
        assert_eq!(
            http_origin("http://git.local:3000/a/b").as_deref(),
            Some("http://git.local:3000/")
        );
        assert_eq!(http_origin("file:///tmp/repo.git"), None);
        assert_eq!(http_origin("git@github.com:acme/widgets.git"), None);
    }

    #[test]
    fn the_token_goes_into_git_config_environment_only_for_https() {
        let git = Git::new("https://github.com/acme/widgets.git", Some("s3cret"));
        let value = git
            .auth_env
            .iter()
            .find(|(k, _)| k == "GIT_CONFIG_VALUE_0")
            .map(|(_, v)| v.clone())
            .unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("x-access-token:s3cret");
        assert_eq!(value, format!("Authorization: Basic {encoded}"));
        assert!(format!("{git:?}").contains("authenticated: true"));
        assert!(!format!("{git:?}").contains("s3cret"));
        assert!(
            Git::new("file:///tmp/r.git", Some("s3cret"))
                .auth_env
                .is_empty()
        );
        assert!(Git::new("https://github.com/a/b", None).auth_env.is_empty());
    }

    #[test]
    fn missing_repositories_and_refused_credentials_are_permanent() {
        let error = |stderr: &str| GitError {
            command: "clone".into(),
            stderr: stderr.into(),
        };
        assert!(
            !error("remote: Repository not found.\nfatal: repository 'x' not found").retryable()
        );
        assert!(!error("fatal: '/tmp/nope' does not appear to be a git repository").retryable());
        assert!(!error("fatal: Authentication failed for 'https://github.com/a/b/'").retryable());
        assert!(
            !error(
                "fatal: could not read Username for 'https://github.com': terminal prompts disabled"
            )
            .retryable()
        );
        assert!(!error("remote: Permission to a/b.git denied to bot.\nfatal: unable to access 'x': The requested URL returned error: 403").retryable());
        assert!(!error("warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope not found in upstream origin").retryable());
        assert!(
            error("fatal: unable to access 'x': Could not resolve host: github.com").retryable()
        );
        assert!(
            error("fatal: unable to access 'x': The requested URL returned error: 502").retryable()
        );
        assert!(error(" ! [rejected]        HEAD -> b (fetch first)").retryable());
    }

    /// Options of ours that take the next argument as their value.
    const TAKES_VALUE: [&str; 4] = ["--branch", "-B", "--depth", "--message"];

    /// Whether git could read the value as an option in `args`: an argument that differs
    /// from `benign` (the same command with a plain value) starts with `-`, is not the value
    /// of an option that takes one, and comes before `--` or `--end-of-options`.
    fn read_as_option(args: &[String], benign: &[String]) -> bool {
        let end = benign
            .iter()
            .position(|a| a == "--" || a == "--end-of-options")
            .unwrap_or(benign.len());
        args.len() != benign.len()
            || args
                .iter()
                .zip(benign)
                .enumerate()
                .any(|(i, (arg, plain))| {
                    arg != plain
                        && arg.starts_with('-')
                        && i < end
                        && !(i > 0 && TAKES_VALUE.contains(&args[i - 1].as_str()))
                })
    }

    type Build = fn(&str) -> Vec<String>;

    /// Every command, with the one value from the spec or the clone under test.
    const BUILDS: [(&str, Build); 9] = [
        ("clone url", |v| args::clone(v, "/tmp/x", None)),
        ("clone branch", |v| {
            args::clone("https://x/y", "/tmp/x", Some(v))
        }),
        ("clone target", |v| {
            args::clone("https://x/y", v, Some("main"))
        }),
        ("config", |v| args::config("user.name", v)),
        ("remote branch", |v| args::remote_branch_exists(v)),
        ("count", |v| args::count_commits(v)),
        ("push url", |v| args::push(v, "b")),
        ("push branch", |v| args::push("https://x/y", v)),
        ("checkout", |v| {
            args::checkout(v, "origin/main", true).unwrap_or_default()
        }),
    ];

    proptest::proptest! {
        #[test]
        fn values_from_the_spec_are_never_read_as_options(
            value in "-{1,2}[a-zA-Z=/ ._-]{0,20}",
        ) {
            for (command, build) in BUILDS {
                let args = build(&value);
                proptest::prop_assert!(!read_as_option(&args, &build("plain")), "{command}: {args:?}");
            }
            proptest::prop_assert!(args::checkout("b", &value, false).is_err());
        }
    }

    #[test]
    fn the_check_catches_a_value_before_the_separator() {
        let unsafe_build = |v: &str| vec!["clone".to_owned(), v.to_owned(), "--".to_owned()];
        assert!(read_as_option(
            &unsafe_build("--upload-pack=x"),
            &unsafe_build("plain")
        ));
    }

    /// Real git, given URLs and branches that would run a command if read as options or
    /// transports: every clone fails and the canary file is never written.
    #[test]
    fn hostile_clone_urls_and_branches_run_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("pwned");
        let touch = format!("touch {}", canary.display());
        let git = Git::new("https://github.com/a/b", None);
        let hostile = [
            format!("--upload-pack={touch}"),
            format!("-u{touch}"),
            format!("--config=core.sshCommand={touch}"),
            format!("ext::sh -c {}", touch.replace(' ', "% ")),
            format!("ssh://-oProxyCommand={}/x", touch.replace(' ', "%20")),
            "-oProxyCommand=sh".to_owned(),
        ];
        for (i, url) in hostile.iter().enumerate() {
            let target = dir.path().join(format!("clone-{i}"));
            assert!(
                Repo::clone(git.clone(), url, &target, None).is_err(),
                "{url}"
            );
            let shallow = Repo::clone(
                git.clone(),
                "https://127.0.0.1:9/a/b",
                &dir.path().join(format!("shallow-{i}")),
                Some(url),
            );
            assert!(shallow.is_err(), "{url}");
        }
        assert!(!canary.exists(), "a hostile value ran a command");
    }
}
