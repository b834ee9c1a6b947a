//! A spinner on stderr while a long request (a VM booting) is in flight.

use std::future::Future;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Awaits `fut`; when `enabled`, shows `⠋ <msg> [12s]` on stderr meanwhile and clears
/// it afterwards.
pub async fn with_spinner<F: Future>(enabled: bool, msg: String, fut: F) -> F::Output {
    if !enabled {
        return fut.await;
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner:.cyan} {msg} [{elapsed}]") {
        bar.set_style(style);
    }
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    let out = fut.await;
    bar.finish_and_clear();
    out
}
