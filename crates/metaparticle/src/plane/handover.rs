//! Handing listening sockets from one process to another (`SCM_RIGHTS` over a Unix socket).
//!
//! A rollout starts the new version beside the old one. Both must accept on
//! the *same* listening socket of each exposed port: a second socket (even with `SO_REUSEPORT`)
//! would have its own accept queue, and closing the old one would reset the connections waiting
//! in it. So whoever holds the exposed listeners offers them on a Unix socket, and the next
//! version receives them (`SCM_RIGHTS`, the way HAProxy and Envoy pass listeners across a
//! reload): on the local runner, the old version's supervisor hands them to the new one's; on the
//! Docker runner, a small edge container per exposed port holds the published socket and hands it
//! to every version's front container (a socket keeps working in the network namespace it was
//! made in, whichever process accepts on it). From then on the kernel's one queue feeds whichever
//! front calls `accept`; once the old fronts stop, every caller goes to the new ones and none is
//! refused or reset.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// At most this many listeners are handed over at once (an app exposes a few ports).
const MAX_LISTENERS: usize = 64;

/// Which exposed replica a listener belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListenerName {
    /// The exposed node.
    pub node: String,
    /// The replica of it.
    pub replica: usize,
}

/// A listener received from the running version.
#[derive(Debug)]
pub(crate) struct Handed {
    /// Whose it was.
    pub name: ListenerName,
    /// The listening socket itself (shared with the old version until it exits).
    pub listener: std::net::TcpListener,
}

/// Serves the exposed listeners on `path` to every supervisor that connects, until dropped.
pub(crate) async fn offer(path: PathBuf, listeners: Vec<(ListenerName, RawFd)>) -> io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let server = tokio::net::UnixListener::bind(&path)?;
    let (names, fds): (Vec<_>, Vec<_>) = listeners.into_iter().unzip();
    let payload = serde_json::to_vec(&names).expect("names serialize");
    loop {
        let (stream, _) = server.accept().await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        if let Err(e) = send_with_fds(&stream, &payload, &fds) {
            tracing::warn!("handing the exposed listeners over failed: {e}");
        }
    }
}

/// Receives the exposed listeners of the version running at `path`.
pub(crate) fn receive(path: &std::path::Path) -> io::Result<Vec<Handed>> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let (mut payload, fds) = receive_with_fds(&stream)?;
    // The names may not have come in one read; the descriptors always come with the first byte.
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest)?;
    payload.extend(rest);
    let names: Vec<ListenerName> = serde_json::from_slice(&payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("a bad handover message: {e}")))?;
    if names.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} listeners named but {} received", names.len(), fds.len()),
        ));
    }
    Ok(names
        .into_iter()
        .zip(fds)
        .map(|(name, fd)| Handed { name, listener: std::net::TcpListener::from(fd) })
        .collect())
}

fn send_with_fds(stream: &UnixStream, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fds = &fds[..fds.len().min(MAX_LISTENERS)];
    let data_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: a zeroed msghdr is a valid empty one; every pointer set below outlives sendmsg.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    if !fds.is_empty() {
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(data_len) bytes, so the first header and its
        // data_len bytes of descriptors fit in it.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(header).cast::<RawFd>(), fds.len());
        }
    }
    // SAFETY: sendmsg on a connected socket this function borrows, with the message built above.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &message, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The rest of the names, if the socket took only part of them with the descriptors.
    (&*stream).write_all(&payload[sent as usize..])
}

fn receive_with_fds(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; 64 * 1024];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_LISTENERS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: as in send_with_fds; the buffers outlive recvmsg.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: recvmsg into the buffers above; CLOEXEC keeps the descriptors from leaking into
    // replicas other than the ones they are passed to on purpose.
    let read = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    payload.truncate(read as usize);
    let mut fds = Vec::new();
    // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let count =
                    ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    if message.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("more listeners were offered than can be received"));
    }
    Ok((payload, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_handed_over_is_the_same_socket_with_the_same_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // A caller waits in the queue before the handover: the receiver must accept it.
        let _caller = std::net::TcpStream::connect(address).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let name = ListenerName { node: "front".into(), replica: 0 };
        let payload = serde_json::to_vec(&[&name]).unwrap();
        send_with_fds(&ours, &payload, &[listener.as_raw_fd()]).unwrap();
        drop(ours);
        let (received, fds) = receive_with_fds(&theirs).unwrap();
        assert_eq!(received, payload);
        assert_eq!(fds.len(), 1);
        // The old holder lets go; the queue lives on in the received descriptor.
        drop(listener);
        let handed = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(handed.local_addr().unwrap(), address);
        handed.set_nonblocking(true).unwrap();
        assert!(handed.accept().is_ok(), "the caller queued before the handover was lost");
    }
}
