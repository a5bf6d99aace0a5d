//! Serving HTTP on a listener so that a slow, silent or greedy client costs bounded memory and
//! never starves Slack's or Discord's requests.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never starts; it has no
//! keep-alive idle limit and no connection cap. This is its accept loop with those added (hyper
//! and hyper-util do the HTTP; only the loop and the counting are ours, since neither crate
//! counts connections):
//!
//! - **Header read timeout** (`server.header_read_timeout`): hyper's own, given a tokio timer.
//!   Hyper starts that clock as soon as it waits for a request head, so it also closes a
//!   keep-alive connection that sits idle for as long. The body and the handler are under the
//!   request timeout (`adapters::http::with_limits`).
//! - **Connections in all** (`server.max_connections`, both listeners together): a connection is
//!   only accepted when a slot is free; until then it waits in the kernel's accept queue
//!   (`listen(8192)`), costing this process no file descriptor and no memory.
//! - **Connections per peer** (`server.max_connections_per_peer`; an IPv6 /64 counts as one
//!   peer, since one host can hold a whole /64): over it, a connection is closed at once, so one
//!   address can't take the slots everyone else needs.
//! - **Read buffer**: 16 KiB per connection instead of hyper's ~400 KiB, which bounds what a
//!   half-sent head can make the bot hold.
//!
//! Shutdown: the loop stops accepting and drops the listener; every connection is told to
//! finish the request it is serving and close (hyper's graceful shutdown); `serve` returns when
//! they all have.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::core::config::ServerConfig;
use crate::core::metrics::Metrics;
use crate::core::throttle::LogThrottle;
use crate::shutdown::Shutdown;

/// hyper's read buffer limit per connection (its minimum is 8 KiB). A request head larger than
/// this is refused; Slack's and Discord's are a few hundred bytes.
const READ_BUFFER: usize = 16 * 1024;

/// The connection limits shared by every listener of one process. Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Arc<Semaphore>,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    max_per_peer: usize,
    header_read_timeout: Duration,
    metrics: Arc<Metrics>,
    refused_log: LogThrottle,
    accept_error_log: LogThrottle,
}

impl Connections {
    /// The limits from `[server]`.
    pub fn new(server: &ServerConfig, metrics: Arc<Metrics>) -> Self {
        Connections {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(server.max_connections)),
                per_peer: Mutex::new(HashMap::new()),
                max_per_peer: server.max_connections_per_peer,
                header_read_timeout: server.header_read_timeout,
                metrics,
                refused_log: LogThrottle::new(Duration::from_secs(10)),
                accept_error_log: LogThrottle::new(Duration::from_secs(10)),
            }),
        }
    }

    /// Takes a slot for one more connection from `ip`, or `None` when that peer is at its cap.
    fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let peer = peer_key(ip);
        let mut map = self
            .inner
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let open = map.entry(peer).or_insert(0);
        if *open >= self.inner.max_per_peer {
            return None;
        }
        *open += 1;
        Some(PeerSlot {
            inner: self.inner.clone(),
            peer,
        })
    }
}

/// One connection's place in its peer's count; given back when the connection ends.
struct PeerSlot {
    inner: Arc<Inner>,
    peer: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .inner
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&self.peer) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// What counts as one peer: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6 /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` fires; returns when every
/// connection has finished its request and closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Connections,
    mut shutdown: Shutdown,
) {
    let connections = TaskTracker::new();
    loop {
        // A free slot first: until there is one, new connections wait in the accept queue.
        let slot = tokio::select! {
            slot = limits.inner.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.fired() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin, and say so now and then.
                    if let Some(times) = limits.inner.accept_error_log.hit() {
                        tracing::warn!(error = %e, times, "cannot accept connections");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.fired() => break,
                    }
                }
            },
            _ = shutdown.fired() => break,
        };
        let Some(peer_slot) = limits.admit(peer.ip()) else {
            limits.inner.metrics.connection_refused("per_peer");
            if let Some(times) = limits.inner.refused_log.hit() {
                tracing::warn!(
                    times,
                    max = limits.inner.max_per_peer,
                    "closed connections from a peer at server.max_connections_per_peer"
                );
            }
            drop(stream);
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.clone(),
            (slot, peer_slot),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One connection, HTTP/1.1 with keep-alive, until the client leaves, a limit cuts it off or
/// shutdown lets its request finish.
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: Connections,
    held: (OwnedSemaphorePermit, PeerSlot),
    mut shutdown: Shutdown,
) {
    let _held = held;
    let _open = OpenGauge::new(&limits.inner.metrics);
    let _ = stream.set_nodelay(true);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.inner.header_read_timeout)
        .max_buf_size(READ_BUFFER);
    // Handlers that need the peer (the `/go/` audit of failed attempts) read it as axum's
    // `ConnectInfo`; the extension wraps the router's service, the router itself is shared.
    let service =
        tower_http::add_extension::AddExtension::new(router, axum::extract::ConnectInfo(peer));
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = shutdown.fired() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        // Timeouts, resets and malformed requests: the client's problem, not the operator's.
        tracing::debug!(error = %e, "connection ended");
    }
}

/// Counts a connection in the open-connections gauge while it lives.
struct OpenGauge(Arc<Metrics>);

impl OpenGauge {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.connections_open(1);
        OpenGauge(metrics.clone())
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.connections_open(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(per_peer: usize) -> Connections {
        let server = crate::Config::parse(
            &format!("[server]\nmax_connections_per_peer = {per_peer}\n"),
            &|_| None,
        )
        .unwrap()
        .server;
        Connections::new(&server, Arc::new(Metrics::new()))
    }

    #[test]
    fn a_peer_gets_its_cap_and_slots_come_back() {
        let c = limits(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = c.admit(a).unwrap();
        let _second = c.admit(a).unwrap();
        assert!(c.admit(a).is_none());
        assert!(c.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(c.admit(a).is_some());
    }

    #[test]
    fn one_ipv6_64_is_one_peer_and_mapped_ipv4_is_ipv4() {
        let c = limits(1);
        let _x = c.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(c.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(c.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _y = c.admit("192.0.2.7".parse().unwrap()).unwrap();
        assert!(c.admit("::ffff:192.0.2.7".parse().unwrap()).is_none());
    }

    proptest! {
        #[test]
        fn the_peer_map_empties_when_every_connection_ends(ips in proptest::collection::vec(any::<u128>(), 0..50)) {
            let c = limits(3);
            let slots: Vec<_> = ips
                .iter()
                .filter_map(|n| c.admit(IpAddr::V6(Ipv6Addr::from(*n))))
                .collect();
            drop(slots);
            prop_assert!(c.inner.per_peer.lock().unwrap().is_empty());
        }
    }
}
