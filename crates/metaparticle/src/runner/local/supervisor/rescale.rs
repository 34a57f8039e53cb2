//! Rescaling a running version in place: more or fewer replicas behind a balancer, and nothing
//! else restarted.
//!
//! `up` of the build that is running, whose plan differs from the running one only in such counts
//! ([`crate::model::rescale`]), asks the running supervisor over a Unix socket in the app's folder
//! (`control.sock`) instead of starting a new version. The supervisor:
//!
//! 1. starts the added replicas on fresh ports and waits until they answer `/healthz` (if one
//!    never does, it stops them and nothing else changed);
//! 2. hands every running process of the version the new address book (see
//!    [`crate::plane::live_book`]): from its next request on, a balancer chooses among the
//!    replicas the book lists;
//! 3. only then stops the removed replicas, which finish what they were serving;
//! 4. records the new plan and book, and answers.
//!
//! The request names the port, address and store the deployer would use: if any differs from
//! the running version's, or the supervisor predates this protocol, the deployer rolls out a new
//! version instead. Both sides speak lines of text: the request is one JSON line; the answer is
//! progress lines, then `DONE <summary>`, `REFUSED: <why>` or `FAILED: <why>`.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::{Ended, ReplicaStatus, Shared, Slot};
use crate::deployments::{self, Deployment};
use crate::model::rescale::{rescale_of, Rescale};
use crate::model::Plan;
use crate::plane::live_book;
use crate::plane::upstream::HttpClient;
use crate::plane::AddressBook;
use crate::runner::local::LocalError;

/// Where a running supervisor takes rescale requests.
fn control_path(app: &str) -> PathBuf {
    deployments::app_dir(app).join("control.sock")
}

/// What the deployer asks for: the plan it compiled, and what it would deploy it with.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    plan: Plan,
    port: u16,
    bind: IpAddr,
    /// The store, in its environment form.
    storage: String,
}

/// How a request ended, as the deployer sees it.
pub(crate) enum Asked {
    /// Rescaled; the supervisor's summary.
    Done(String),
    /// Not a rescale the running version can make: roll out a new version instead.
    Refused(String),
}

/// How long a supervisor waits for the request once a deployer connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request a supervisor reads (a plan of a thousand nodes is far below it).
const MAX_REQUEST: u64 = 4 * 1024 * 1024;

/// Asks the running supervisor of `app` to run `plan` (a rescale of its own) in place, printing
/// its progress as it comes. `Err` if it tried and failed (the version then runs as before).
pub(crate) async fn ask(
    app: &str,
    plan: &Plan,
    port: u16,
    bind: IpAddr,
    storage: String,
    timeout: Duration,
) -> Result<Asked, LocalError> {
    let request = Request { plan: plan.clone(), port, bind, storage };
    let Ok(stream) = UnixStream::connect(control_path(app)).await else {
        return Ok(Asked::Refused("the running supervisor takes no rescale requests".into()));
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&request).expect("a rescale request serializes");
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| LocalError::io("asking the supervisor to rescale", e))?;
    let mut lines = BufReader::new(read).lines();
    let answer = tokio::time::timeout(timeout, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(summary) = line.strip_prefix("DONE ") {
                return Ok(Asked::Done(summary.to_string()));
            }
            if let Some(why) = line.strip_prefix("REFUSED: ") {
                return Ok(Asked::Refused(why.to_string()));
            }
            if let Some(why) = line.strip_prefix("FAILED: ") {
                let mut why = why.to_string();
                while let Ok(Some(more)) = lines.next_line().await {
                    why = format!("{why}\n{more}");
                }
                return Err(LocalError::SupervisorFailed(why));
            }
            println!("{line}");
        }
        Err(LocalError::SupervisorFailed("the supervisor hung up before it finished the rescale".into()))
    })
    .await;
    answer.unwrap_or(Err(LocalError::NotReady { after: timeout }))
}

/// The supervisor's side: the version's plan and record as they are now, and how to start and
/// stop replicas of it.
pub(super) struct Rescaler<'a> {
    plan: Plan,
    record: Deployment,
    shared: Arc<Shared>,
    replicas: &'a mut JoinSet<()>,
    width: usize,
}

impl<'a> Rescaler<'a> {
    /// A rescaler of the version `record` describes, running `plan`, whose replicas run in
    /// `replicas`.
    pub(super) fn new(
        plan: Plan,
        record: Deployment,
        shared: Arc<Shared>,
        replicas: &'a mut JoinSet<()>,
        width: usize,
    ) -> Self {
        Self { plan, record, shared, replicas, width }
    }

    /// Serves rescale requests, one at a time, until `ended` says how the version ends.
    pub(super) async fn serve_until(mut self, mut ended: Pin<&mut impl Future<Output = Ended>>) -> Ended {
        let path = control_path(&self.shared.order.app);
        // A socket file left by an earlier version of the app is no one's now.
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot take rescale requests");
                None
            }
        };
        loop {
            let accepted = async {
                match &listener {
                    Some(listener) => listener.accept().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = &mut ended => return ended,
                accepted = accepted => {
                    if let Ok((stream, _)) = accepted {
                        self.serve(stream).await;
                    }
                }
            }
        }
    }

    async fn serve(&mut self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut text = String::new();
        // A caller that connects and says nothing must not hold the supervisor (which also waits
        // for its stop signals in this loop) for more than a moment.
        let mut reader = BufReader::new(read.take(MAX_REQUEST));
        let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut text))
            .await
            .ok()
            .and_then(Result::ok);
        let say = |line: String| {
            let mut line = line.into_bytes();
            line.push(b'\n');
            line
        };
        let answer = match read.and_then(|_| serde_json::from_str::<Request>(&text).ok()) {
            None => say("REFUSED: the request is not a rescale request".into()),
            Some(request) => match self.rescale(request, &mut write).await {
                Ok(summary) => say(format!("DONE {summary}")),
                Err(Failure::Refused(why)) => say(format!("REFUSED: {why}")),
                Err(Failure::Failed(e)) => say(format!("FAILED: {e}")),
            },
        };
        let _ = write.write_all(&answer).await;
    }

    async fn rescale(
        &mut self,
        request: Request,
        progress: &mut (impl AsyncWriteExt + Unpin),
    ) -> Result<String, Failure> {
        let started = Instant::now();
        let order = &self.shared.order;
        if (request.port, request.bind, request.storage.as_str())
            != (order.port, order.bind, &*order.storage.to_env())
        {
            return Err(Failure::Refused(
                "the port, address or store differs from the running version's".into(),
            ));
        }
        let Some(changes) = rescale_of(&request.plan, &self.plan) else {
            return Err(Failure::Refused("the plan changes more than replica counts".into()));
        };
        let old_book = self.shared.book();
        let mut added = Vec::new();
        for change in changes.iter().filter(|c| c.to > c.from) {
            let node = request.plan.node(&change.node).expect("a rescaled node is in the plan").clone();
            for replica in change.from..change.to {
                let listener = super::bind_listener("127.0.0.1:0".parse().expect("valid"), &node.name)
                    .map_err(Failure::Failed)?;
                super::widen_backlog(&listener);
                let address = listener
                    .local_addr()
                    .map_err(|e| Failure::Failed(LocalError::io("reading a bound address", e)))?
                    .to_string();
                added.push(Slot { node: node.clone(), replica, listener, address, public: None });
            }
        }
        let book = old_book.rescaled(&changes, |node| {
            added.iter().filter(|s| s.node.name == node).map(|s| s.address.clone()).collect()
        });
        // Replicas started from here on, the added ones and any that restarts, get the new book.
        self.shared.set_book(book.clone());
        let mut started_indices = Vec::new();
        let mut names = Vec::new();
        for slot in added {
            names.push(slot.node.replica_name(slot.replica));
            let index = self.shared.add(ReplicaStatus {
                node: slot.node.name.clone(),
                replica: slot.replica,
                address: slot.address.clone(),
                pid: None,
                state: "starting".into(),
                restarts: 0,
                last_exit: None,
            });
            let stop = self.shared.stop_for(index, self.shared.stop.clone());
            self.replicas.spawn(super::keep_running_until(
                index,
                slot,
                self.shared.clone(),
                self.width,
                stop,
            ));
            started_indices.push(index);
        }
        if !names.is_empty() {
            let _ = progress.write_all(format!("  starting {}\n", names.join(", ")).as_bytes()).await;
        }
        let health = HttpClient::new("");
        if let Err(e) = super::wait_healthy(&health, &self.shared, &started_indices).await {
            // Nothing else changed: the running replicas never heard of the new ones.
            self.shared.set_book(old_book);
            self.stop(&started_indices).await;
            return Err(Failure::Failed(e));
        }
        drop(health);
        let unreached = self.hand_out(&book).await;
        let removed = self.removed(&changes);
        let removed_names: Vec<String> = {
            let statuses = self.shared.statuses.lock().expect("status lock");
            removed.iter().map(|&i| format!("{}-{}", statuses[i].node, statuses[i].replica)).collect()
        };
        if !removed_names.is_empty() {
            let _ = progress
                .write_all(
                    format!("  stopping {} (they finish what they serve)\n", removed_names.join(", "))
                        .as_bytes(),
                )
                .await;
        }
        self.stop(&removed).await;
        self.plan = request.plan;
        self.record.plan = self.plan.clone();
        self.record.book = book;
        self.record.save().map_err(|e| Failure::Failed(e.into()))?;
        let mut summary = crate::runner::describe_rescaled(
            started.elapsed(),
            self.plan.process_count(),
            "processes",
            &changes,
            &names,
            &removed_names,
        );
        if unreached > 0 {
            summary += &format!(" ({unreached} restarting processes take the new book when they start)");
        }
        Ok(summary)
    }

    /// The indices of the running replicas `changes` removes.
    fn removed(&self, changes: &[Rescale]) -> Vec<usize> {
        let statuses = self.shared.statuses.lock().expect("status lock");
        statuses
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                !self.shared.is_forgotten(*i)
                    && changes.iter().any(|c| c.node == s.node && s.replica >= c.to && c.to < c.from)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Hands `book` to every running process of the version; how many could not take it (a
    /// process that is restarting starts with it anyway).
    async fn hand_out(&self, book: &AddressBook) -> usize {
        let addresses: Vec<String> = {
            let statuses = self.shared.statuses.lock().expect("status lock");
            statuses
                .iter()
                .enumerate()
                .filter(|(i, s)| !self.shared.is_forgotten(*i) && s.pid.is_some())
                .map(|(_, s)| s.address.clone())
                .collect()
        };
        let secret = &self.shared.secret;
        let handed = futures_util::future::join_all(addresses.iter().map(|address| {
            // A process that was just (re)started may not listen yet: a few tries, briefly.
            crate::runner::retry_briefly(move || async move {
                live_book::hand(address, secret, book).await.is_ok()
            })
        }))
        .await;
        let unreached = handed.iter().filter(|ok| !**ok).count();
        if unreached > 0 {
            self.shared.log(format!("rescale: {unreached} processes did not take the new address book"));
        }
        unreached
    }

    /// Stops the replicas at `indices` (they drain first) and forgets them.
    async fn stop(&mut self, indices: &[usize]) {
        for &index in indices {
            self.shared.retire_replica(index);
        }
        let deadline = Instant::now() + crate::plane::shutdown::DRAIN_TIMEOUT + Duration::from_secs(5);
        while Instant::now() < deadline {
            let statuses = self.shared.statuses.lock().expect("status lock").clone();
            if indices.iter().all(|&i| statuses[i].state == "stopped") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for &index in indices {
            self.shared.forget(index);
        }
    }
}

/// Why a rescale did not happen.
enum Failure {
    /// Not a rescale of this version: the deployer rolls out instead.
    Refused(String),
    /// Tried, and failed; the version runs as before.
    Failed(LocalError),
}
