//! Where a worker's connections come from: its own listening socket, or a share dealt to it by
//! the node's accept loop.
//!
//! A node runs one share-nothing worker per core. Workers that all accept from the same socket do
//! not share the work: when a client opens its connections at once, the worker that wakes first
//! takes nearly all of them, and the others idle (measured with `perf` under wrk's 32
//! connections: one of a balancer's two workers served almost every request while 7 % of the
//! machine stood idle). So one accept loop, [`deal`], hands connections to the workers in turn,
//! and each worker serves the [`Connections`] it is dealt. Connections are long-lived, so the one
//! extra hand-over per connection costs nothing per request.
//!
//! Accepting is also where a node protects itself when connections run out (see
//! [`super::connections`]): every accepted connection is counted, and when there is no room for
//! another, the one idle longest is closed first; if every connection is busy, new callers wait in
//! the backlog until one finishes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::connections::{ConnectionTable, Registration};
use super::shutdown::Shutdown;

/// The connections one worker serves.
pub(crate) enum Connections {
    /// Accepted by the worker itself from its listener.
    Accept(TcpListener),
    /// Dealt to it by [`deal`], possibly from another thread, each already counted.
    Dealt(UnboundedReceiver<(std::net::TcpStream, Registration)>),
}

/// A connection to serve: the stream, its peer, and its place in the process's connection table.
pub(crate) struct Accepted {
    /// The connection, registered with the calling runtime.
    pub stream: TcpStream,
    /// Who connected.
    pub peer: SocketAddr,
    /// Counts the connection until dropped; tells it when to close to make room.
    pub registration: Registration,
}

impl From<TcpListener> for Connections {
    fn from(listener: TcpListener) -> Self {
        Connections::Accept(listener)
    }
}

impl Connections {
    /// The next connection, registered with the calling runtime; `None` when no more will come.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Accepted>> {
        match self {
            Connections::Accept(listener) => {
                let table = ConnectionTable::of_this_process();
                let (stream, peer) = accept(listener, &table).await?;
                let registration = table.register(stream.as_raw_fd());
                Ok(Some(Accepted { stream, peer, registration }))
            }
            Connections::Dealt(dealt) => loop {
                let Some((stream, registration)) = dealt.recv().await else { return Ok(None) };
                // A client that has already gone away has no peer address: skip it.
                let Ok(peer) = stream.peer_addr() else { continue };
                let stream = TcpStream::from_std(stream)?;
                return Ok(Some(Accepted { stream, peer, registration }));
            },
        }
    }
}

/// Splits `listeners` among `workers`: the accept loop to run, and each worker's connections.
///
/// A node usually has one listener; an exposed front being rolled out also accepts on the
/// app's public socket it shares with the previous version (`MP_LISTEN_ALSO`), while its own
/// socket serves its version's internal callers and health probes. Connections of both are
/// dealt in one turn.
///
/// The accept loop must run on a runtime of its own thread's (typically worker 0's); it ends with
/// an error only when a listener fails for good or every worker has stopped, and with `Ok` when
/// `shutdown` fires: it then closes the listeners, so new callers are refused at once.
pub(crate) fn deal(
    listeners: Vec<std::net::TcpListener>,
    workers: usize,
    shutdown: Shutdown,
) -> (impl std::future::Future<Output = io::Result<()>>, Vec<Connections>) {
    let (senders, shares): (Vec<UnboundedSender<_>>, Vec<_>) =
        (0..workers.max(1)).map(|_| unbounded_channel()).map(|(tx, rx)| (tx, Connections::Dealt(rx))).unzip();
    let accept_loop = async move {
        let dealer = Arc::new(Dealer { senders, turn: AtomicUsize::new(0) });
        let loops =
            listeners.into_iter().map(|listener| accept_into(listener, dealer.clone(), shutdown.clone()));
        futures_util::future::try_join_all(loops).await.map(|_| ())
    };
    (accept_loop, shares)
}

/// The workers' channels, and whose turn is next (shared by the accept loops of a node).
struct Dealer {
    senders: Vec<UnboundedSender<(std::net::TcpStream, Registration)>>,
    turn: AtomicUsize,
}

/// Accepts from one listener and deals each connection to the next worker in turn.
async fn accept_into(
    listener: std::net::TcpListener,
    dealer: Arc<Dealer>,
    mut shutdown: Shutdown,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let table = ConnectionTable::of_this_process();
    let senders = &dealer.senders;
    loop {
        let (stream, _) = tokio::select! {
            accepted = accept(&listener, &table) => accepted?,
            _ = shutdown.requested() => return Ok(()),
        };
        let registration = table.register(stream.as_raw_fd());
        let mut stream = Some((stream.into_std()?, registration));
        // Deal in turn; a worker that stopped is skipped, and when none is left, so is the node.
        for _ in 0..senders.len() {
            let turn = dealer.turn.fetch_add(1, Ordering::Relaxed);
            match senders[turn % senders.len()].send(stream.take().expect("each connection is dealt once")) {
                Ok(()) => break,
                Err(returned) => stream = Some(returned.0),
            }
        }
        if stream.is_some() {
            return Err(io::Error::other("every worker of this node has stopped"));
        }
    }
}

/// Accepts the next connection once `table` has room for it, shedding the connection idle
/// longest if it has none. Errors that concern one connection are skipped; running out of file
/// descriptors (the table's reserve was not enough) sheds an idle connection too, and a shortage
/// nothing can relieve now is waited out rather than ending the node.
async fn accept(listener: &TcpListener, table: &Arc<ConnectionTable>) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        if !table.make_room() {
            // Every connection is busy: as HAProxy beyond maxconn, leave newcomers in the backlog
            // until a request finishes (it then counts as idle, or its connection closes).
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        match listener.accept().await {
            Ok(accepted) => return Ok(accepted),
            Err(e) if is_per_connection(&e) => continue,
            Err(e) if is_shortage(&e) => {
                if table.shed_oldest_idle() {
                    // Give the shed connection's task a moment to close its descriptor.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                } else {
                    tracing::warn!(error = %e, "cannot accept a connection now; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

fn is_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A non-blocking listener on a free loopback port, and its address.
    fn loopback_listener() -> (std::net::TcpListener, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    #[tokio::test]
    async fn connections_are_dealt_to_the_workers_in_turn() {
        let (listener, address) = loopback_listener();
        let (accept_loop, shares) = deal(vec![listener], 3, Shutdown::never());
        let dealer = tokio::spawn(accept_loop);
        let clients: Vec<_> = (0..6).map(|_| std::net::TcpStream::connect(address).unwrap()).collect();
        for mut share in shares {
            let mut peers = HashSet::new();
            for _ in 0..2 {
                let accepted = share.next().await.unwrap().expect("a connection for every worker");
                peers.insert(accepted.peer);
            }
            assert_eq!(peers.len(), 2, "each worker gets two different connections of six");
        }
        drop(clients);
        dealer.abort();
    }

    #[tokio::test]
    async fn a_front_accepts_on_its_own_socket_and_on_the_shared_public_one() {
        let (own, own_address) = loopback_listener();
        let (public, public_address) = loopback_listener();
        let (accept_loop, mut shares) = deal(vec![own, public], 1, Shutdown::never());
        let dealer = tokio::spawn(accept_loop);
        let clients =
            [std::net::TcpStream::connect(own_address), std::net::TcpStream::connect(public_address)];
        let local: HashSet<SocketAddr> =
            clients.iter().map(|c| c.as_ref().unwrap().local_addr().unwrap()).collect();
        let mut peers = HashSet::new();
        for _ in 0..2 {
            peers.insert(shares[0].next().await.unwrap().expect("a connection").peer);
        }
        assert_eq!(peers, local, "both callers were accepted");
        dealer.abort();
    }

    #[tokio::test]
    async fn the_accept_loop_ends_when_every_worker_has_stopped() {
        let (listener, address) = loopback_listener();
        let (accept_loop, shares) = deal(vec![listener], 2, Shutdown::never());
        drop(shares);
        let _client = std::net::TcpStream::connect(address).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), accept_loop).await.expect("ends");
        assert!(outcome.unwrap_err().to_string().contains("every worker"));
    }
}
