//! Stopping a node gracefully: stop accepting, let what is in flight finish, within a bound.
//!
//! One signal is passed to every part of a node that takes connections (the accept loop and each
//! worker's server), as mini-redis passes its `shutdown` to `run`: nothing reads a global. When
//! it fires, accept loops close their listeners (new callers are refused at once, so a balancer
//! in front retries them elsewhere), and each open connection finishes the request it is serving
//! and closes (hyper's graceful shutdown; idle keep-alive connections close at once). All of that
//! gets the signal's drain bound ([`DRAIN_TIMEOUT`] unless the node's `MP_DRAIN_SECONDS` says
//! otherwise); whatever is still running then is dropped and the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How long a stopping node waits for requests in flight before it exits anyway. Kubernetes pods
/// get this plus some room as their termination grace period.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Fires a [`Shutdown`] (and every clone of it), from any thread.
#[derive(Debug)]
pub(crate) struct Trigger(watch::Sender<bool>, StopFlag);

impl Trigger {
    /// Asks everything holding a [`Shutdown`] of this trigger to stop.
    pub(crate) fn fire(&self) {
        self.1 .0.store(true, Ordering::Relaxed);
        self.0.send_replace(true);
    }
}

/// Whether a [`Shutdown`] has fired, as one atomic load: what a connection asks of every answer
/// it writes (a clone is one reference count, where a [`Shutdown`] is a channel receiver).
#[derive(Clone, Debug, Default)]
pub(crate) struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether the node has been asked to stop.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether the node has been asked to stop; cheap to clone and to poll.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    fired: Option<watch::Receiver<bool>>,
    flag: StopFlag,
    drain: Duration,
}

impl Shutdown {
    /// A shutdown signal whose drain lasts at most `drain`, and the trigger that fires it.
    pub(crate) fn new(drain: Duration) -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        let flag = StopFlag::default();
        (Trigger(tx, flag.clone()), Shutdown { fired: Some(rx), flag, drain })
    }

    /// A signal that never fires (in-process test apps, which stop by being dropped).
    pub(crate) fn never() -> Shutdown {
        Shutdown { fired: None, flag: StopFlag::default(), drain: DRAIN_TIMEOUT }
    }

    /// How long requests in flight may take to finish once the signal fired.
    pub(crate) fn drain_timeout(&self) -> Duration {
        self.drain
    }

    /// Whether it has fired.
    #[cfg(test)]
    pub(crate) fn is_requested(&self) -> bool {
        self.flag.is_set()
    }

    /// Its flag alone, for what only asks whether it fired.
    pub(crate) fn flag(&self) -> StopFlag {
        self.flag.clone()
    }

    /// Resolves once the signal fires (never, for [`Shutdown::never`] or a dropped trigger).
    pub(crate) async fn requested(&mut self) {
        match &mut self.fired {
            Some(rx) => {
                if rx.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_signal_even_after_it_fired() {
        let (trigger, shutdown) = Shutdown::new(DRAIN_TIMEOUT);
        let mut early = shutdown.clone();
        let waiter = tokio::spawn(async move { early.requested().await });
        assert!(!shutdown.is_requested());
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        let mut late = shutdown.clone();
        tokio::time::timeout(Duration::from_secs(5), late.requested()).await.unwrap();
        assert!(late.is_requested());
    }

    #[tokio::test]
    async fn never_does_not_fire() {
        let mut never = Shutdown::never();
        assert!(tokio::time::timeout(Duration::from_millis(50), never.requested()).await.is_err());
    }
}
