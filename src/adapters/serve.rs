//! Serving HTTP on a listener so that a slow, silent or greedy client costs bounded memory and
//! never starves Slack's or Discord's requests.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never starts; it has no
//! keep-alive idle limit and no connection cap. This is its accept loop with those added (hyper
//! and hyper-util do the HTTP; only the loop and the counting are ours, since neither crate
//! counts connections):
//!
//! - **Header read timeout** (`server.header_read_timeout`): hyper's own, given a tokio timer.
//!   The body and the handler are under the request timeout (`adapters::http::with_limits`).
//! - **Idle timeout** (`server.idle_timeout`, default 1 s): a keep-alive connection with no
//!   request in progress since its last answer is closed after it (before its first request a
//!   connection is under the header read timeout, which runs from the accept).
//!   hyper has no such limit of its own (its header timer runs from the same moment but is
//!   sized for a slow head), so each connection watches its own reads and answers
//!   ([`Activity`]). Without it, keep-alives that send a tiny request every few seconds hold
//!   their slots for ever (issue 19, item 2).
//! - **Connections in all** (`server.max_connections` on the public listener; a small budget of
//!   its own, [`PROBE_CONNECTIONS`], on the metrics listener, so health probes and scrapes never
//!   wait behind the public cap): a connection is only accepted when a slot is free; until then
//!   it waits in the kernel's accept queue (`listen(8192)`), costing this process no file
//!   descriptor and no memory. At the cap, the connection idle the longest is closed to make
//!   room, so idle connections can't keep a waiting one out.
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
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::core::budget::client_key;
use crate::core::config::ServerConfig;
use crate::core::metrics::Metrics;
use crate::core::throttle::LogThrottle;
use crate::shutdown::Shutdown;

/// hyper's read buffer limit per connection (its minimum is 8 KiB). A request head larger than
/// this is refused; Slack's and Discord's are a few hundred bytes.
const READ_BUFFER: usize = 16 * 1024;

/// Connections the metrics listener (`/metrics`, `/healthz`, `/readyz`) takes at once, apart
/// from the public cap: enough for the kubelet's probes and a few scrapers.
pub const PROBE_CONNECTIONS: usize = 32;

/// At the cap with no idle connection to close, how long the accept loop waits for a slot
/// before it looks for one again.
const EVICT_RETRY: Duration = Duration::from_millis(50);

/// How long a connection closed for being idle may take to finish writing an answer it
/// already has, before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    idle_timeout: Duration,
    /// Every open connection's activity, to find the one idle the longest.
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// The clock [`Activity`] counts in.
    clock: Instant,
    metrics: Arc<Metrics>,
    refused_log: LogThrottle,
    accept_error_log: LogThrottle,
}

impl Connections {
    /// The public listener's limits, from `[server]`.
    pub fn new(server: &ServerConfig, metrics: Arc<Metrics>) -> Self {
        Self::with(
            server.max_connections,
            server.max_connections_per_peer,
            server,
            metrics,
        )
    }

    /// The metrics listener's own, small budget ([`PROBE_CONNECTIONS`], any peer may take it
    /// all: probes and scrapers come from few addresses), with `[server]`'s timeouts.
    pub fn probes(server: &ServerConfig, metrics: Arc<Metrics>) -> Self {
        Self::with(PROBE_CONNECTIONS, PROBE_CONNECTIONS, server, metrics)
    }

    fn with(max: usize, max_per_peer: usize, server: &ServerConfig, metrics: Arc<Metrics>) -> Self {
        Connections {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(max)),
                per_peer: Mutex::new(HashMap::new()),
                max_per_peer,
                header_read_timeout: server.header_read_timeout,
                idle_timeout: server.idle_timeout,
                open: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                clock: Instant::now(),
                metrics,
                refused_log: LogThrottle::new(Duration::from_secs(10)),
                accept_error_log: LogThrottle::new(Duration::from_secs(10)),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.elapsed().as_millis() as u64
    }

    /// Counts a new connection as open (idle until its first byte); it leaves the count when
    /// the returned guard drops.
    fn track(&self) -> Tracked {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(self.now_ms()));
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, activity.clone());
        Tracked {
            inner: self.inner.clone(),
            id,
            activity,
        }
    }

    /// Tells the keep-alive connection idle the longest (one that has answered a request) to
    /// close, to make room for one waiting. False when no connection is idle. A scan of the open connections (at most the cap), made
    /// only when the cap is reached, never on the request path.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = open
            .values()
            .filter(|a| !a.evicted.load(Ordering::Relaxed) && a.answered.load(Ordering::Relaxed))
            .filter_map(|a| a.idle_since().map(|since| (since, a)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, activity)) => {
                activity.evicted.store(true, Ordering::Relaxed);
                activity.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Takes a slot for one more connection from `ip`, or `None` when that peer is at its cap.
    fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let peer = client_key(ip);
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

/// Whether a connection has a request in progress, and since when it has not: the idle
/// timeout and the eviction at the cap read it. A request is in progress from the first byte
/// read after the connection was accepted or answered, until its answer is ready.
struct Activity {
    /// Milliseconds on the [`Connections`] clock since which the connection is idle, or
    /// [`BUSY`].
    idle_since: AtomicU64,
    /// Chosen to make room at the cap (so it is not chosen twice).
    evicted: AtomicBool,
    /// It has answered a request: only then is it a keep-alive that may be closed to make room.
    /// A connection not yet answered may hold a request the loop hasn't read yet (its bytes
    /// already in the socket); closing it would drop that request, so it is left to the header
    /// read timeout.
    answered: AtomicBool,
    close: Notify,
}

/// [`Activity::idle_since`] while a request is in progress.
const BUSY: u64 = u64::MAX;

impl Activity {
    fn new(now_ms: u64) -> Self {
        Activity {
            idle_since: AtomicU64::new(now_ms),
            evicted: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    fn idle_since(&self) -> Option<u64> {
        Some(self.idle_since.load(Ordering::Relaxed)).filter(|&since| since != BUSY)
    }

    fn busy(&self) {
        self.idle_since.store(BUSY, Ordering::Relaxed);
    }

    fn idle(&self, now_ms: u64) {
        self.answered.store(true, Ordering::Relaxed);
        self.evicted.store(false, Ordering::Relaxed);
        self.idle_since.store(now_ms, Ordering::Relaxed);
    }
}

/// An open connection's entry in [`Inner::open`]; removed when it drops.
struct Tracked {
    inner: Arc<Inner>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Why an idle connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum IdleEnd {
    Timeout,
    Evicted,
}

impl IdleEnd {
    fn name(self) -> &'static str {
        match self {
            IdleEnd::Timeout => "timeout",
            IdleEnd::Evicted => "evicted",
        }
    }
}

/// Resolves when the connection has been idle for `limits`' idle timeout, or is chosen to make
/// room at the cap while idle. A request in progress is under hyper's and the router's own
/// limits, not this one.
async fn idle_end(limits: &Connections, activity: &Activity) -> IdleEnd {
    let idle_timeout = limits.inner.idle_timeout;
    loop {
        // Not yet answered: its first request is under hyper's header read timeout, which runs
        // from the accept (a loaded machine may take a while to read bytes already sent).
        let since = activity
            .idle_since()
            .filter(|_| activity.answered.load(Ordering::Relaxed));
        let Some(since) = since else {
            // Busy: look again a timeout later (the deadline is counted from when it went
            // idle, so it is kept to the millisecond all the same). Chosen to make room
            // meanwhile: it went idle after this look began, so it goes now.
            tokio::select! {
                _ = tokio::time::sleep(idle_timeout) => {}
                _ = activity.close.notified() => {
                    if activity.idle_since().is_some() && activity.answered.load(Ordering::Relaxed) {
                        return IdleEnd::Evicted;
                    }
                }
            }
            continue;
        };
        let deadline = tokio::time::Instant::from_std(
            limits.inner.clock + Duration::from_millis(since) + idle_timeout,
        );
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if activity.idle_since() == Some(since) {
                    return IdleEnd::Timeout;
                }
            }
            _ = activity.close.notified() => {
                if activity.idle_since().is_some() {
                    return IdleEnd::Evicted;
                }
            }
        }
    }
}

/// The connection's socket, marking the connection busy when a request's first bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.busy();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
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
        // A free slot first: until there is one, new connections wait in the accept queue. At
        // the cap, the connection idle the longest is closed to make one.
        let slot = match limits.inner.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let retry = if limits.evict_oldest_idle() {
                    // It closes within moments; look again if it became busy instead.
                    EVICT_RETRY
                } else {
                    EVICT_RETRY * 2
                };
                tokio::select! {
                    slot = limits.inner.slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = tokio::time::sleep(retry) => continue,
                    _ = shutdown.fired() => break,
                }
            }
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
    let tracked = limits.track();
    let activity = tracked.activity.clone();
    let _ = stream.set_nodelay(true);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.inner.header_read_timeout)
        .max_buf_size(READ_BUFFER);
    // Handlers that need the peer (the `/go/` audit of failed attempts) read it as axum's
    // `ConnectInfo`; the extension wraps the router's service, the router itself is shared.
    let service = TowerToHyperService::new(tower_http::add_extension::AddExtension::new(
        router,
        axum::extract::ConnectInfo(peer),
    ));
    // The connection is idle again once an answer is ready.
    let answered = {
        let (activity, limits) = (activity.clone(), limits.clone());
        hyper::service::service_fn(move |request| {
            let answer = hyper::service::Service::call(&service, request);
            let (activity, limits) = (activity.clone(), limits.clone());
            async move {
                let answer = answer.await;
                activity.idle(limits.now_ms());
                answer
            }
        })
    };
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let conn = http.serve_connection(io, answered);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = shutdown.fired() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        why = idle_end(&limits, &activity) => {
            limits.inner.metrics.idle_connection_closed(why.name());
            // Nothing is being read; an answer still being written gets a moment to finish.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(CLOSE_GRACE, conn).await.unwrap_or(Ok(()))
        }
    };
    drop(tracked);
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

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_the_longest_is_chosen() {
        let c = limits(4);
        let first = c.track();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = c.track();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let third = c.track();
        let fresh = c.track();
        // Each has answered a request and is idle since (in this order); `fresh` has not.
        for t in [&second, &third] {
            t.activity.idle(c.now_ms());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        first.activity.busy();
        assert!(c.evict_oldest_idle());
        assert!(
            second.activity.evicted.load(Ordering::Relaxed),
            "the oldest idle one"
        );
        assert!(
            !first.activity.evicted.load(Ordering::Relaxed),
            "busy: never"
        );
        assert!(c.evict_oldest_idle());
        assert!(
            third.activity.evicted.load(Ordering::Relaxed),
            "then the next"
        );
        assert!(
            !c.evict_oldest_idle(),
            "none idle left to choose: a connection not yet answered is never chosen"
        );
        assert!(!fresh.activity.evicted.load(Ordering::Relaxed));
        drop((first, second, third, fresh));
        assert!(c.inner.open.lock().unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn the_peer_map_empties_when_every_connection_ends(ips in proptest::collection::vec(any::<u128>(), 0..50)) {
            let c = limits(3);
            let slots: Vec<_> = ips
                .iter()
                .filter_map(|n| c.admit(IpAddr::V6(std::net::Ipv6Addr::from(*n))))
                .collect();
            drop(slots);
            prop_assert!(c.inner.per_peer.lock().unwrap().is_empty());
        }
    }
}
