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
        let mut args = vec!["clone", "--no-tags"];
        if let Some(branch) = shallow {
            args.extend(["--depth", "1", "--single-branch", "--branch", branch]);
        } else {
            args.push("--no-checkout");
        }
        args.extend(["--", url, target.as_str()]);
        git.run(None, &args)?;
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
        self.run(&["config", "user.name", name])?;
        self.run(&["config", "user.email", email])?;
        Ok(())
    }

    /// Whether `origin/{branch}` exists (the clone saw the branch on the remote).
    pub fn remote_branch_exists(&self, branch: &str) -> Result<bool, GitError> {
        let reference = format!("refs/remotes/origin/{branch}");
        self.git.test(
            &self.dir,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &reference,
            ],
        )
    }

    /// Checks out `branch` at `start`, creating or resetting the local branch.
    pub fn checkout(&self, branch: &str, start: &str, track: bool) -> Result<(), GitError> {
        let track = if track { "--track" } else { "--no-track" };
        self.run(&["checkout", "--quiet", track, "-B", branch, start])?;
        Ok(())
    }

    pub fn head(&self) -> Result<String, GitError> {
        self.run(&["rev-parse", "HEAD"])
    }

    /// Commits between `from` (exclusive) and HEAD.
    pub fn count_commits(&self, from: &str) -> Result<u64, GitError> {
        let range = format!("{from}..HEAD");
        let count = self.run(&["rev-list", "--count", &range])?;
        count.parse().map_err(|_| GitError {
            command: format!("rev-list --count {range}"),
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
        let refspec = format!("HEAD:refs/heads/{branch}");
        self.run(&["push", "--quiet", "--no-verify", "--", &self.url, &refspec])?;
        Ok(())
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
}
