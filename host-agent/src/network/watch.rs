//! The firewall's background loops, started with the agent when it enforces:
//!
//! - every second, the DHCP leases of this agent's sandboxes: an address that appears
//!   or changes is admitted by the rules (a sandbox's IPv4 traffic, and so the agent's
//!   SSH to it, passes only from its admitted address);
//! - every ten seconds, the tables themselves: missing or changed from outside (an
//!   operator's `nft flush ruleset`, another tool), they are rebuilt and a warning is
//!   logged.
//!
//! Both hold only a weak reference to the service: they end when it is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::hypervisor::Hypervisor;
use crate::sandboxes::Sandboxes;

/// How often leases are read.
pub const LEARN_EVERY: Duration = Duration::from_secs(1);
/// How often the tables are compared with what the agent applied.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Starts both loops (nothing when the firewall does not enforce).
pub fn spawn<H: Hypervisor>(sandboxes: &Arc<Sandboxes<H>>) {
    if !sandboxes.firewall().is_enforcing() {
        return;
    }
    let weak = Arc::downgrade(sandboxes);
    tokio::spawn(every(
        LEARN_EVERY,
        weak.clone(),
        "learning sandbox addresses",
        |s| Box::pin(async move { s.learn_ips().await.map(drop).map_err(|e| e.to_string()) }),
    ));
    tokio::spawn(every(
        CHECK_EVERY,
        weak,
        "checking the sandbox network rules",
        |s| {
            Box::pin(async move {
                s.firewall()
                    .check()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        },
    ));
}

type Pass = futures::future::BoxFuture<'static, Result<(), String>>;

/// Runs `pass` every `period` while the service lives. A failure is logged when it
/// starts or changes (not every second while it lasts), and when it clears.
async fn every<H: Hypervisor>(
    period: Duration,
    service: Weak<Sandboxes<H>>,
    what: &'static str,
    pass: impl Fn(Arc<Sandboxes<H>>) -> Pass,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    loop {
        tick.tick().await;
        let Some(s) = service.upgrade() else {
            break;
        };
        match pass(s).await {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!("{what}: working again");
                }
            }
            Err(e) => {
                if failing.as_deref() != Some(e.as_str()) {
                    tracing::warn!("{what}: {e}");
                    failing = Some(e);
                }
            }
        }
    }
}
