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

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::shutdown::Shutdown;

/// The connections one worker serves.
pub(crate) enum Connections {
    /// Accepted by the worker itself from its listener.
    Accept(TcpListener),
    /// Dealt to it by [`deal`], possibly from another thread.
    Dealt(UnboundedReceiver<std::net::TcpStream>),
}

impl From<TcpListener> for Connections {
    fn from(listener: TcpListener) -> Self {
        Connections::Accept(listener)
    }
}

impl Connections {
    /// The next connection, registered with the calling runtime; `None` when no more will come.
    pub(crate) async fn next(&mut self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        match self {
            Connections::Accept(listener) => accept(listener).await.map(Some),
            Connections::Dealt(dealt) => loop {
                let Some(stream) = dealt.recv().await else { return Ok(None) };
                // A client that has already gone away has no peer address: skip it.
                let Ok(peer) = stream.peer_addr() else { continue };
                return TcpStream::from_std(stream).map(|stream| Some((stream, peer)));
            },
        }
    }
}

/// Splits `listener` among `workers`: the accept loop to run, and each worker's connections.
///
/// The accept loop must run on a runtime of its own thread's (typically worker 0's); it ends with
/// an error only when the listener fails for good or every worker has stopped, and with `Ok` when
/// `shutdown` fires: it then closes the listener, so new callers are refused at once.
pub(crate) fn deal(
    listener: std::net::TcpListener,
    workers: usize,
    mut shutdown: Shutdown,
) -> (impl std::future::Future<Output = io::Result<()>>, Vec<Connections>) {
    let (senders, shares): (Vec<UnboundedSender<_>>, Vec<_>) =
        (0..workers.max(1)).map(|_| unbounded_channel()).map(|(tx, rx)| (tx, Connections::Dealt(rx))).unzip();
    let accept_loop = async move {
        let listener = TcpListener::from_std(listener)?;
        let mut turn = 0usize;
        loop {
            let (stream, _) = tokio::select! {
                accepted = accept(&listener) => accepted?,
                _ = shutdown.requested() => return Ok(()),
            };
            let mut stream = Some(stream.into_std()?);
            // Deal in turn; a worker that stopped is skipped, and when none is left, so is the node.
            for _ in 0..senders.len() {
                let worker = &senders[turn % senders.len()];
                turn = turn.wrapping_add(1);
                match worker.send(stream.take().expect("each connection is dealt once")) {
                    Ok(()) => break,
                    Err(returned) => stream = Some(returned.0),
                }
            }
            if stream.is_some() {
                return Err(io::Error::other("every worker of this node has stopped"));
            }
        }
    };
    (accept_loop, shares)
}

/// Accepts the next connection. Errors that concern one connection, or a shortage that passes
/// (out of file descriptors or memory), are logged and waited out rather than ending the node.
async fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        match listener.accept().await {
            Ok(accepted) => return Ok(accepted),
            Err(e) if is_per_connection(&e) => continue,
            Err(e) if is_shortage(&e) => {
                tracing::warn!(error = %e, "cannot accept a connection now; retrying shortly");
                tokio::time::sleep(Duration::from_millis(50)).await;
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
        let (accept_loop, shares) = deal(listener, 3, Shutdown::never());
        let dealer = tokio::spawn(accept_loop);
        let clients: Vec<_> = (0..6).map(|_| std::net::TcpStream::connect(address).unwrap()).collect();
        for mut share in shares {
            let mut peers = HashSet::new();
            for _ in 0..2 {
                let (_, peer) = share.next().await.unwrap().expect("a connection for every worker");
                peers.insert(peer);
            }
            assert_eq!(peers.len(), 2, "each worker gets two different connections of six");
        }
        drop(clients);
        dealer.abort();
    }

    #[tokio::test]
    async fn the_accept_loop_ends_when_every_worker_has_stopped() {
        let (listener, address) = loopback_listener();
        let (accept_loop, shares) = deal(listener, 2, Shutdown::never());
        drop(shares);
        let _client = std::net::TcpStream::connect(address).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), accept_loop).await.expect("ends");
        assert!(outcome.unwrap_err().to_string().contains("every worker"));
    }
}
