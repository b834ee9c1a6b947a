//! One expensive fixture (a booted VM, a controller stack) shared by the tests of one
//! test binary, each test still its own `#[test]` named after what it proves.
//!
//! Why not `#[tokio::test]` and a `static OnceCell`: each `#[tokio::test]` builds its own
//! runtime and drops it when the test ends, and with it every task, socket and child
//! process watcher the fixture made on it (the agent's SSH connections, an HTTP client's
//! pool, a controller's child handle). So the fixture lives on one runtime of the
//! binary's own ([`runtime`]), and every test runs its body there with
//! [`Shared::run`]:
//!
//! - the fixture is made by the first test that needs it (in a task, so a panic while
//!   making it is caught); a fixture that could not be made fails every test that
//!   needs it, with the same message, without trying again;
//! - tests take turns (one holds the fixture at a time), whatever `--test-threads` says;
//! - when the binary exits, after its last test (passed or failed), the fixture is
//!   torn down ([`Teardown`]): a static is never dropped, so without this its VMs and
//!   processes would outlive the run.

use std::future::Future;
use std::sync::{Mutex, OnceLock};

/// The runtime every [`Shared`] fixture and the tests using it run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("shared-fixture")
            .build()
            .expect("building the shared fixtures' runtime")
    })
}

/// What a shared fixture does when the test binary exits.
pub trait Teardown: Send + 'static {
    /// Removes what the fixture made (VMs, processes, files). Runs once, on [`runtime`].
    fn teardown(self) -> impl Future<Output = ()> + Send;
}

enum State<T> {
    Empty,
    Ready(T),
    Failed(String),
    TornDown,
}

/// A fixture made once per test binary and lent to one test at a time.
pub struct Shared<T> {
    state: tokio::sync::Mutex<State<T>>,
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl<T: Teardown> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Teardown> Shared<T> {
    pub const fn new() -> Self {
        Self {
            state: tokio::sync::Mutex::const_new(State::Empty),
        }
    }

    /// Runs `test` with the fixture, made first by `setup` if no test made it yet.
    /// Blocks the calling (test) thread until `test` is done; a panic in `test` fails
    /// that test only.
    #[track_caller]
    pub fn run<E, S, SF, R>(&'static self, setup: S, test: impl AsyncFnOnce(&mut T) -> R) -> R
    where
        E: std::fmt::Debug + Send + 'static,
        S: FnOnce() -> SF,
        SF: Future<Output = Result<T, E>> + Send + 'static,
    {
        runtime().block_on(async {
            let mut state = self.state.lock().await;
            if matches!(*state, State::Empty) {
                at_exit(move || self.teardown());
                let made = match runtime().spawn(setup()).await {
                    Ok(Ok(fixture)) => State::Ready(fixture),
                    Ok(Err(e)) => State::Failed(format!("{e:?}")),
                    Err(e) => State::Failed(panic_message(e)),
                };
                *state = made;
            }
            match &mut *state {
                State::Ready(fixture) => test(fixture).await,
                State::Failed(why) => panic!("the shared fixture could not be made: {why}"),
                State::Empty | State::TornDown => {
                    panic!("the shared fixture is gone (the binary is exiting)")
                }
            }
        })
    }

    /// At exit: takes the fixture and tears it down.
    fn teardown(&'static self) {
        let Ok(mut state) = self.state.try_lock() else {
            eprintln!("shared fixture: still in use at exit, not torn down");
            return;
        };
        if let State::Ready(fixture) = std::mem::replace(&mut *state, State::TornDown) {
            drop(state);
            runtime().block_on(fixture.teardown());
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

type ExitHook = Box<dyn FnOnce() + Send>;

static AT_EXIT: Mutex<Vec<ExitHook>> = Mutex::new(Vec::new());

/// Runs `hook` when the process exits normally (libtest's `main` returns, or calls
/// `process::exit` after failed tests), latest registered first.
pub fn at_exit(hook: impl FnOnce() + Send + 'static) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: `run_at_exit` is an `extern "C" fn()` that never unwinds (it catches
        // panics), which is all `atexit` asks of its argument.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::atexit(run_at_exit) };
        assert_eq!(rc, 0, "atexit refused the teardown hook");
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(hook));
}

extern "C" fn run_at_exit() {
    let hooks = std::mem::take(
        &mut *AT_EXIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for hook in hooks.into_iter().rev() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
            eprintln!("an exit hook panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counter(usize);

    impl Teardown for Counter {
        async fn teardown(self) {}
    }

    #[test]
    fn a_fixture_is_made_once_and_keeps_what_tests_did_to_it() {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        static FIXTURE: Shared<Counter> = Shared::new();
        let setup = || async {
            MADE.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(Counter(0))
        };
        for want in 1..=3 {
            let seen = FIXTURE.run(setup, async |c| {
                c.0 += 1;
                c.0
            });
            assert_eq!(seen, want);
        }
        assert_eq!(MADE.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_fixture_that_cannot_be_made_fails_every_test_that_needs_it() {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        static FIXTURE: Shared<Counter> = Shared::new();
        for _ in 0..2 {
            let outcome = std::panic::catch_unwind(|| {
                FIXTURE.run(
                    || async {
                        MADE.fetch_add(1, Ordering::SeqCst);
                        Err::<Counter, _>("no VM today")
                    },
                    async |_| (),
                )
            });
            let message = outcome
                .expect_err("the test must fail")
                .downcast::<String>()
                .expect("a message");
            assert!(message.contains("no VM today"), "{message}");
        }
        assert_eq!(MADE.load(Ordering::SeqCst), 1, "made once, not retried");
    }

    #[test]
    fn a_panic_while_making_it_is_reported() {
        static FIXTURE: Shared<Counter> = Shared::new();
        async fn boot() -> Result<Counter, String> {
            panic!("libvirtd is gone")
        }
        let outcome = std::panic::catch_unwind(|| FIXTURE.run(boot, async |_| ()));
        let message = outcome
            .expect_err("the test must fail")
            .downcast::<String>()
            .expect("a message");
        assert!(message.contains("libvirtd is gone"), "{message}");
    }
}
