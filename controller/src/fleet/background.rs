//! Periodic background loops (heartbeat, reconciler, janitor). Each tick first takes the
//! loop's replica lock from the store (a PostgreSQL advisory lock; always granted on
//! SQLite), so with several controller replicas exactly one runs each loop at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::store::{LoopKey, Store};

/// Runs `tick` every `every` until `cancel` fires. A tick in progress is abandoned at
/// cancellation (every step it takes is idempotent and is redone by the next run).
pub async fn run_periodic<F, Fut>(
    name: &'static str,
    every: Duration,
    key: LoopKey,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = interval.tick() => {}
        }
        let lock = match store.try_lock_loop(key).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                tracing::trace!(loop_name = name, "another replica runs this loop");
                continue;
            }
            Err(e) => {
                tracing::warn!(loop_name = name, error = %e, "cannot take the loop lock");
                continue;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            r = tick() => if let Err(e) = r {
                tracing::warn!(loop_name = name, error = %e, "tick failed");
            }
        }
        lock.release().await;
    }
    tracing::debug!(loop_name = name, "stopped");
}
