//! Heartbeats of long activities (chat turns, jobs): they keep flowing while the activity
//! runs, so a dead worker is noticed within the heartbeat timeout while a live one may work
//! as long as it needs, and Temporal's cancellation reaches the activity through them.

use std::time::Duration;

use temporalio_sdk::activities::ActivityContext;

/// Heartbeats every `every` until dropped, on whichever path the activity leaves.
pub struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    pub fn start(ctx: ActivityContext, every: Duration) -> Heartbeat {
        Heartbeat(tokio::spawn(async move {
            let mut beats: u64 = 0;
            loop {
                if let Err(error) = ctx.record_heartbeat(beats).await {
                    tracing::warn!(%error, "cannot record a heartbeat");
                }
                beats += 1;
                tokio::time::sleep(every).await;
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}
