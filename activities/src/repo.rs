//! GitHub repository names: parsing what users and models write (`owner/name`, a github.com
//! URL, with or without `.git`) into a validated owner and name. Anything that could smuggle a
//! path, an option or a URL of another host into git or the GitHub API is refused here.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub owner: String,
    pub name: String,
}

impl Repo {
    /// `owner/name`, as GitHub's API and URLs write it.
    pub fn full_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a GitHub repository: expected owner/name or https://github.com/owner/name")]
pub struct RepoError(pub String);

pub fn parse_repo(input: &str) -> Result<Repo, RepoError> {
    let invalid = || RepoError(input.to_string());
    let trimmed = input.trim();
    let path = ["https://github.com/", "http://github.com/", "github.com/"]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))
        .unwrap_or(trimmed);
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let mut parts = path.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let owner_ok = (1..=39).contains(&owner.len())
        && !owner.starts_with('-')
        && !owner.ends_with('-')
        && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    // `..` anywhere, not just alone: GitHub may allow `a..b`, but no real repository needs
    // it, and a name that could pass for traversal somewhere is not worth the doubt.
    let name_ok = (1..=100).contains(&name.len())
        && name != "."
        && !name.contains("..")
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !owner_ok || !name_ok {
        return Err(invalid());
    }
    Ok(Repo {
        owner: owner.to_string(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_spellings() {
        for input in [
            "acme/web",
            "https://github.com/acme/web",
            "https://github.com/acme/web.git",
            "github.com/acme/web/",
            " acme/web ",
        ] {
            assert_eq!(
                parse_repo(input).map(|r| r.full_name()),
                Ok("acme/web".to_string()),
                "{input}"
            );
        }
        assert_eq!(
            parse_repo("my-org/repo.name_2").map(|r| r.name),
            Ok("repo.name_2".into())
        );
    }

    #[test]
    fn refuses_hostile_and_foreign_names() {
        for input in [
            "",
            "acme",
            "acme/web/tree/main",
            "../etc/passwd",
            "acme/..",
            "acme/a..b",
            "-acme/web",
            "acme/--upload-pack=evil",
            "https://gitlab.com/acme/web",
            "acme/web?x=1",
            "acme/we b",
            "ac me/web",
            "acme/web;rm",
            "file:///etc/passwd",
        ] {
            assert!(parse_repo(input).is_err(), "{input} was accepted");
        }
    }
}
