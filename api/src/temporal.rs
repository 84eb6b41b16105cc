//! The API's link to Temporal. The API starts, accepts and stores input without Temporal;
//! this link connects in the background and keeps trying, and the outbox relay and
//! readiness check use it once it is up.

use std::time::Duration;

use mainloop_workflows::TemporalSettings;
use temporalio_client::Client;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct TemporalLink {
    client: watch::Receiver<Option<Client>>,
}

impl TemporalLink {
    /// Connects in the background, retrying until it works or `shutdown`.
    pub fn connect_in_background(
        settings: TemporalSettings,
        shutdown: CancellationToken,
    ) -> TemporalLink {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Some(client) = settings.connect_with_retry(&shutdown).await
                && tx.send(Some(client)).is_err()
            {
                tracing::debug!("nobody uses the Temporal link any more");
            }
        });
        TemporalLink { client: rx }
    }

    /// A link that never connects (for an API without Temporal, e.g. in tests of validation).
    pub fn disconnected() -> TemporalLink {
        let (_tx, rx) = watch::channel(None);
        TemporalLink { client: rx }
    }

    /// A link that is already connected.
    pub fn connected(client: Client) -> TemporalLink {
        let (_tx, rx) = watch::channel(Some(client));
        TemporalLink { client: rx }
    }

    pub fn current(&self) -> Option<Client> {
        self.client.borrow().clone()
    }

    /// The client, once connected; `None` if the connection attempt was abandoned.
    pub async fn wait(&self) -> Option<Client> {
        let mut rx = self.client.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(client) => client.clone(),
            Err(_) => None,
        }
    }

    /// Whether Temporal answers right now.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        let Some(client) = self.current() else {
            return Err("not connected yet".to_string());
        };
        let mut service = client.connection().workflow_service();
        match tokio::time::timeout(
            timeout,
            service.get_system_info(GetSystemInfoRequest::default().into_request()),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}
