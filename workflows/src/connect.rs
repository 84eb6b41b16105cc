//! Connecting to Temporal: from the standard `TEMPORAL_*` environment (and `temporal.toml`
//! profiles), the same way the `temporal` CLI does, with retries while the server is down.

use std::time::Duration;

use anyhow::{Result, anyhow};
use temporalio_client::envconfig::LoadClientConfigProfileOptions;
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};
use tokio_util::sync::CancellationToken;

/// Where and how to reach Temporal.
#[derive(Clone, Debug)]
pub struct TemporalSettings {
    pub connection: ConnectionOptions,
    pub namespace: String,
}

impl TemporalSettings {
    /// Reads `TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*`,
    /// `TEMPORAL_PROFILE` and `TEMPORAL_CONFIG_FILE`, as the CLI does.
    pub fn from_env(identity: &str) -> Result<TemporalSettings> {
        let (mut connection, client) =
            ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())
                // The SDK's config error is not Send; keep only its text.
                .map_err(|e| anyhow!("reading the Temporal configuration: {e}"))?;
        connection.identity = identity.to_string();
        Ok(TemporalSettings {
            connection,
            namespace: client.namespace,
        })
    }

    /// A plain-text connection to `address` (`host:port`), for the dev server.
    pub fn local(address: &str, namespace: &str, identity: &str) -> Result<TemporalSettings> {
        let target = Url::parse(&format!("http://{address}"))
            .map_err(|e| anyhow!("bad Temporal address {address:?}: {e}"))?;
        let mut connection = ConnectionOptions::new(target).build();
        connection.identity = identity.to_string();
        Ok(TemporalSettings {
            connection,
            namespace: namespace.to_string(),
        })
    }

    /// The server as people write it (`host:port`), for logs.
    pub fn address(&self) -> String {
        let target = &self.connection.target;
        match (target.host_str(), target.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => target.to_string(),
        }
    }

    pub async fn connect(&self) -> Result<Client> {
        let connection = Connection::connect(self.connection.clone())
            .await
            .map_err(|e| anyhow!("connecting to Temporal at {}: {e}", self.address()))?;
        Client::new(
            connection,
            ClientOptions::new(self.namespace.clone()).build(),
        )
        .map_err(|e| anyhow!("creating the Temporal client: {e}"))
    }

    /// Connects, retrying with backoff until it works or `shutdown` is cancelled (`None`).
    pub async fn connect_with_retry(&self, shutdown: &CancellationToken) -> Option<Client> {
        let mut backoff = Duration::from_millis(200);
        let mut warned = false;
        loop {
            match self.connect().await {
                Ok(client) => {
                    if warned {
                        tracing::info!(address = %self.address(), "connected to Temporal");
                    }
                    return Some(client);
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(%error, "Temporal is unreachable; retrying");
                        warned = true;
                    } else {
                        tracing::debug!(%error, "Temporal is still unreachable");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return None,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
