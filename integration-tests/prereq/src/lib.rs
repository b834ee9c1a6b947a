//! Test prerequisites. Some tests need a tool or a service that a developer's machine may
//! lack (PostgreSQL, ansible-playbook, qemu-img, IPv6 loopback). Such a test asks
//! [`available`] before it runs:
//!
//! - with the prerequisite present, the test runs;
//! - without it, on a developer's machine, the test returns early and says so on
//!   standard output with a `FLUID-SKIP` line (shown by `cargo test -- --nocapture` and
//!   in the runner's output for failed tests);
//! - without it under CI (`CI` set to anything but `false`/`0`) or with
//!   `FLUID_REQUIRE_ALL=1`, the test **fails**, naming what was missing, so a green CI
//!   run never hides a test that did not run.
//!
//! [`shared`] lends one expensive fixture (a booted VM) to the tests of a binary.

pub mod shared;

/// Whether a missing prerequisite must fail the test instead of skipping it.
pub fn required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
            .unwrap_or(false)
    };
    set("CI") || set("FLUID_REQUIRE_ALL")
}

/// Answers `true` when the test may run. With `present == false`, prints a
/// `FLUID-SKIP <kind>: <why>` line and answers `false`, or panics when [`required`].
///
/// `kind` groups tests in the summary (`postgres`, `ansible`, `qemu-img`, `ipv6`).
#[track_caller]
pub fn available(kind: &str, present: bool, why: &str) -> bool {
    if present {
        return true;
    }
    if required() {
        panic!("prerequisite missing ({kind}): {why} — CI/FLUID_REQUIRE_ALL forbids skipping");
    }
    println!("FLUID-SKIP {kind}: {why}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_prerequisites_run() {
        assert!(available("x", true, "never printed"));
    }

    #[test]
    fn a_missing_prerequisite_skips_or_fails() {
        let outcome = std::panic::catch_unwind(|| available("x", false, "missing on purpose"));
        if required() {
            assert!(
                outcome.is_err(),
                "under CI a missing prerequisite must fail"
            );
        } else {
            assert_eq!(outcome.ok(), Some(false));
        }
    }
}
