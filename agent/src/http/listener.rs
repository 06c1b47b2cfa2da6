//! The health endpoint's listener: what connections may hold. The agent
//! runs with the service's file limit (systemd's soft default is 1,024) and
//! needs its descriptors for netlink, pinned maps and pod namespaces; an
//! HTTP connection that sends nothing would otherwise be kept open for
//! ever (axum sets no read timeout). So:
//!
//! - from anywhere but this node: at most [`PER_SOURCE`] connections at
//!   once from one address, and at most [`FROM_ELSEWHERE`] in all;
//! - from this node itself (the connection's source is the address it
//!   reached, or loopback: kubelet probing a host-network pod, a local
//!   scraper) no limit, so no crowd of pods can keep the probes out, and
//!   what runs on the node with its addresses could do worse anyway;
//! - each connection lives at most [`LIFETIME`] (a probe or a scrape takes
//!   milliseconds), so a held slot comes free.
//!
//! A connection over a limit is accepted and closed at once; every refusal
//! and every connection cut at its lifetime is counted by cause.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

/// Connections at once from one source address (other than this node's).
pub const PER_SOURCE: usize = 16;
/// Connections at once from everywhere but this node.
pub const FROM_ELSEWHERE: usize = 128;
/// How long a connection may stay open.
pub const LIFETIME: Duration = Duration::from_secs(10);

/// Why a connection was refused or cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already had [`PER_SOURCE`] connections open.
    PerSourceLimit,
    /// [`FROM_ELSEWHERE`] connections from other hosts were open.
    FromElsewhereLimit,
    /// It was still open after [`LIFETIME`].
    LifetimeOver,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [
        Refusal::PerSourceLimit,
        Refusal::FromElsewhereLimit,
        Refusal::LifetimeOver,
    ];

    /// The label value `weft_http_refusals_total` counts it under.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerSourceLimit => "per_source_limit",
            Refusal::FromElsewhereLimit => "from_elsewhere_limit",
            Refusal::LifetimeOver => "lifetime_over",
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    by_source: HashMap<IpAddr, usize>,
    from_elsewhere: usize,
}

/// The connections open now, by source: admits or refuses new ones.
#[derive(Clone, Debug, Default)]
pub struct Admission(Arc<Mutex<Open>>);

/// An admitted connection's place; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    /// `None` for a connection from this node (not counted).
    counted: Option<(Arc<Mutex<Open>>, IpAddr)>,
}

impl Admission {
    /// A place for a connection from `source`, `local` if it comes from
    /// this node itself, unless that would break a limit.
    pub fn admit(&self, source: IpAddr, local: bool) -> Result<Slot, Refusal> {
        if local {
            return Ok(Slot { counted: None });
        }
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= PER_SOURCE {
            return Err(Refusal::PerSourceLimit);
        }
        if open.from_elsewhere >= FROM_ELSEWHERE {
            return Err(Refusal::FromElsewhereLimit);
        }
        open.by_source.insert(source, from_source + 1);
        open.from_elsewhere += 1;
        Ok(Slot {
            counted: Some((self.0.clone(), source)),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((open, source)) = &self.counted else {
            return;
        };
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.by_source.get_mut(source) {
            *count -= 1;
            if *count == 0 {
                open.by_source.remove(source);
            }
        }
        open.from_elsewhere -= 1;
    }
}

/// Whether a connection from `peer` to `local` comes from this node.
fn from_this_node(peer: SocketAddr, local: Option<SocketAddr>) -> bool {
    peer.ip().is_loopback() || local.is_some_and(|local| local.ip() == peer.ip())
}

/// A [`TcpListener`] that admits connections by [`Admission`] and gives
/// each a [`LIFETIME`]; `counted` hears of every refusal.
pub struct BoundedListener {
    inner: TcpListener,
    admission: Admission,
    counted: fn(Refusal),
}

impl BoundedListener {
    pub fn new(inner: TcpListener, counted: fn(Refusal)) -> Self {
        Self {
            inner,
            admission: Admission::default(),
            counted,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Bounded, SocketAddr) {
        loop {
            // axum's accept: retries, and waits a second on EMFILE.
            let (stream, peer) = axum::serve::Listener::accept(&mut self.inner).await;
            let local = from_this_node(peer, stream.local_addr().ok());
            match self.admission.admit(peer.ip(), local) {
                Ok(slot) => {
                    return (
                        Bounded {
                            stream,
                            _slot: slot,
                            deadline: Box::pin(tokio::time::sleep(LIFETIME)),
                            counted: self.counted,
                            over: false,
                        },
                        peer,
                    );
                }
                // Dropped: closed without a word.
                Err(refusal) => (self.counted)(refusal),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An admitted connection: once its lifetime is over, reading it ends as if
/// the client had closed it, so an answer being written is still finished
/// (a scrape's answer fits in the socket's buffer) and the server then
/// closes the connection.
pub struct Bounded {
    stream: TcpStream,
    _slot: Slot,
    deadline: Pin<Box<Sleep>>,
    counted: fn(Refusal),
    over: bool,
}

impl Bounded {
    /// Whether the lifetime is over (counted the first time); if not,
    /// registers the task to be woken when it will be.
    fn lifetime_over(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.over && self.deadline.as_mut().poll(cx).is_ready() {
            self.over = true;
            (self.counted)(Refusal::LifetimeOver);
        }
        self.over
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.lifetime_over(cx) {
            // End of stream: nothing more is read from this connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn address(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 244, 1, last))
    }

    #[test]
    fn one_source_gets_at_most_its_share_and_the_share_comes_back() {
        let admission = Admission::default();
        let mut held: Vec<Slot> = (0..PER_SOURCE)
            .map(|_| admission.admit(address(2), false).unwrap())
            .collect();
        assert_eq!(
            admission.admit(address(2), false).unwrap_err(),
            Refusal::PerSourceLimit
        );
        // Another source is not affected.
        assert!(admission.admit(address(3), false).is_ok());
        held.pop();
        assert!(admission.admit(address(2), false).is_ok());
    }

    #[test]
    fn a_crowd_of_sources_cannot_keep_this_node_out() {
        let admission = Admission::default();
        let crowd: Vec<Slot> = (0..FROM_ELSEWHERE)
            .map(|index| {
                let source = address(1 + (index / PER_SOURCE) as u8);
                admission.admit(source, false).unwrap()
            })
            .collect();
        assert_eq!(
            admission.admit(address(200), false).unwrap_err(),
            Refusal::FromElsewhereLimit
        );
        // Kubelet's probes come from the node itself: never refused.
        let node = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1));
        let local: Vec<Slot> = (0..2 * PER_SOURCE)
            .map(|_| admission.admit(node, true).unwrap())
            .collect();
        assert!(
            admission
                .admit(IpAddr::V4(Ipv4Addr::LOCALHOST), true)
                .is_ok()
        );
        drop(local);
        drop(crowd);
        assert!(admission.admit(address(200), false).is_ok());
    }

    #[test]
    fn this_node_is_a_connection_from_its_own_address_or_loopback() {
        let local = Some(SocketAddr::from(([192, 168, 77, 1], 10267)));
        let from = |ip: [u8; 4]| SocketAddr::from((ip, 40000));
        assert!(from_this_node(from([192, 168, 77, 1]), local));
        assert!(from_this_node(from([127, 0, 0, 1]), local));
        assert!(!from_this_node(from([10, 244, 1, 2]), local));
        assert!(!from_this_node(from([192, 168, 77, 2]), local));
    }
}
