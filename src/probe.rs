//! `mainloop probe URL`: the health check of container images that ship no HTTP client. It
//! only reads a status; the body and any redirect are not followed, so a probe never turns into
//! a request somewhere else.

use anyhow::{Context, Result, bail};

use crate::config::ProbeArgs;

pub async fn run(args: ProbeArgs) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let response = client
        .get(args.url.clone())
        .send()
        .await
        .with_context(|| format!("GET {}", args.url))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {} answered {status}", args.url);
    }
    Ok(())
}
