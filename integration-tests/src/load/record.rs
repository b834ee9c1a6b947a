//! What a load run measured: every call's latency per route, and its errors by kind.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::bench::percentile;

/// The kind of error that counts as intended: a quota's 429.
pub const QUOTA: &str = "429 (quota)";

#[derive(Debug, Default)]
struct Route {
    /// Latency of each call that answered as expected.
    ok: Vec<Duration>,
    errors: u64,
}

/// Latencies and errors of one run, shared by every session.
#[derive(Debug, Default)]
pub struct Recorder {
    routes: Mutex<HashMap<&'static str, Route>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// One route's figures, as the table shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteFigures {
    pub route: &'static str,
    pub ok: usize,
    pub errors: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Recorder {
    pub fn ok(&self, route: &'static str, took: Duration) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(route).or_default().ok.push(took);
    }

    /// A call that failed; `kind` names how (a status, a transport error, …).
    pub fn error(&self, route: &'static str, kind: String) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(route).or_default().errors += 1;
        drop(routes);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(format!("{route}: {kind}")).or_default() += 1;
    }

    /// Errors by route and kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Errors that are not an intended 429.
    pub fn unintended_errors(&self) -> u64 {
        self.errors()
            .iter()
            .filter(|(k, _)| !k.ends_with(QUOTA))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every route's figures, by route.
    pub fn figures(&self) -> Vec<RouteFigures> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<RouteFigures> = routes
            .iter_mut()
            .map(|(route, r)| {
                r.ok.sort_unstable();
                RouteFigures {
                    route,
                    ok: r.ok.len(),
                    errors: r.errors,
                    p50: percentile(&r.ok, 50.0),
                    p99: percentile(&r.ok, 99.0),
                    max: r.ok.last().copied().unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by_key(|f| f.route);
        out
    }

    /// The per-route table over `elapsed`.
    pub fn table(&self, elapsed: Duration) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        let mut out = format!(
            "{:<46} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9}\n",
            "route", "calls", "calls/s", "errors", "p50 ms", "p99 ms", "max ms"
        );
        for f in self.figures() {
            let calls = f.ok as u64 + f.errors;
            let _ = writeln!(
                out,
                "{:<46} {:>8} {:>8.1} {:>7} {:>9} {:>9} {:>9}",
                f.route,
                calls,
                calls as f64 / elapsed.as_secs_f64().max(1e-3),
                f.errors,
                ms(f.p50),
                ms(f.p99),
                ms(f.max)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors_are_counted_per_route() {
        let r = Recorder::default();
        for ms in 1..=100 {
            r.ok("GET /v1/x", Duration::from_millis(ms));
        }
        r.error("GET /v1/x", QUOTA.into());
        r.error("GET /v1/x", "500".into());
        let f = &r.figures()[0];
        assert_eq!((f.ok, f.errors), (100, 2));
        assert_eq!(f.p50, Duration::from_millis(51));
        assert_eq!(f.p99, Duration::from_millis(99));
        assert_eq!(f.max, Duration::from_millis(100));
        assert_eq!(r.unintended_errors(), 1);
        assert!(r.table(Duration::from_secs(10)).contains("GET /v1/x"));
    }
}
