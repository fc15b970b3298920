//! The listener's connections, bounded: at most `max_connections` at once (kept
//! below the process's file-descriptor limit), each with a deadline for its request
//! headers, a cap on their size, and an idle timeout (no byte moved either way).
//! At the cap, a new connection takes the slot of the connection that has been
//! idle longest (not inside a request, and idle for `evict_after` at least), so a
//! crowd of idle or dripping sockets (slowloris) cannot lock a Prometheus scrape
//! out; while no slot can be had, new connections wait in the kernel's backlog, and
//! one that waited past the header timeout is closed.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::Request};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use super::{Limits, Shared};

/// The address a request came from (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// What a connection did last, for the idle timeout and for eviction.
struct Activity {
    /// Milliseconds since `epoch` when a byte last moved either way.
    last_ms: AtomicU64,
    /// Requests inside the service (from their headers to the end of the response
    /// body).
    in_flight: AtomicUsize,
    /// Requests whose answer is still being worked out (no byte to send yet: not
    /// idle).
    handling: AtomicUsize,
    epoch: Instant,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        let a = Self {
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            handling: AtomicUsize::new(0),
            epoch,
        };
        a.touch();
        a
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Whether nothing moved for `timeout` while no answer was being worked out.
    fn idle_past(&self, timeout: Duration) -> bool {
        self.handling.load(Ordering::Relaxed) == 0 && self.idle_for() >= timeout
    }
}

struct Entry {
    activity: Arc<Activity>,
    close: Notify,
}

/// The open connections.
struct Registry {
    max: usize,
    /// Connections idle for less than this are not evicted (a client that just
    /// connected gets the time to send its request).
    evict_after: Duration,
    epoch: Instant,
    conns: Mutex<(u64, HashMap<u64, Arc<Entry>>)>,
    /// Signalled when a connection ends.
    freed: Notify,
}

enum Admission {
    /// The slot's id and entry.
    Admitted(u64, Arc<Entry>),
    /// At the cap, and no connection idle long enough to give up its slot.
    Full,
}

impl Registry {
    /// Admits a new connection, at the cap in the slot of the connection idle
    /// longest (if idle for `evict_after` at least). Returns whether one was
    /// evicted, too.
    fn admit(&self) -> (Admission, bool) {
        let Ok(mut g) = self.conns.lock() else {
            return (Admission::Full, false);
        };
        let (next, conns) = &mut *g;
        let mut evicted = false;
        if conns.len() >= self.max {
            let idlest = conns
                .iter()
                .filter(|(_, e)| !e.activity.busy())
                .map(|(id, e)| (*id, e.activity.idle_for()))
                .filter(|(_, idle)| *idle >= self.evict_after)
                .max_by_key(|(_, idle)| *idle)
                .map(|(id, _)| id);
            match idlest.and_then(|id| conns.remove(&id)) {
                Some(e) => {
                    e.close.notify_one();
                    evicted = true;
                }
                None => return (Admission::Full, false),
            }
        }
        *next += 1;
        let entry = Arc::new(Entry {
            activity: Arc::new(Activity::new(self.epoch)),
            close: Notify::new(),
        });
        conns.insert(*next, Arc::clone(&entry));
        (Admission::Admitted(*next, entry), evicted)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut g) = self.conns.lock() {
            g.1.remove(&id);
        }
        self.freed.notify_one();
    }

    fn len(&self) -> usize {
        self.conns.lock().map_or(0, |g| g.1.len())
    }
}

/// The soft limit on open file descriptors, if known.
fn fd_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// File descriptors kept for everything but HTTP connections (maps, programs,
/// policy watches, output files, the API server).
const FD_RESERVE: u64 = 256;

/// `wanted`, lowered so that HTTP connections leave `FD_RESERVE` descriptors free
/// (at least 8).
pub fn connection_cap(wanted: usize) -> usize {
    let Some(limit) = fd_limit() else {
        return wanted;
    };
    let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    let cap = wanted.min(room.max(8));
    if cap < wanted {
        warn!(
            wanted,
            cap,
            open_files_limit = limit,
            "HTTP listener: fewer connections than --http-max-connections, to stay below the open-file limit"
        );
    }
    cap
}

/// Accepts connections on `listener` until the runtime stops.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shared: Arc<Shared>,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        max: limits.max_connections.max(1),
        evict_after: limits.evict_after,
        epoch: Instant::now(),
        conns: Mutex::new((0, HashMap::new())),
        freed: Notify::new(),
    });
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (or another transient failure): wait a little
                // rather than spin; the connection waits in the backlog.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    warn!(error = %e, total = accept_errors, "HTTP listener: accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let m = &shared.metrics;
        // At the cap, this connection waits (and the next ones in the kernel's
        // backlog) until a slot frees or a connection has been idle long enough to
        // give up its own; past the header timeout it is closed.
        let waited = Instant::now();
        let admitted = loop {
            let (admission, evicted) = registry.admit();
            if evicted {
                m.http_shed.with_label_values(&["idle_evicted"]).inc();
            }
            match admission {
                Admission::Admitted(id, entry) => break Some((id, entry)),
                Admission::Full if waited.elapsed() >= limits.header_read_timeout => break None,
                Admission::Full => {
                    tokio::select! {
                        () = registry.freed.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        };
        let Some((id, entry)) = admitted else {
            m.http_shed.with_label_values(&["refused"]).inc();
            drop(stream);
            continue;
        };
        m.http_connections.set(registry.len() as i64);
        let app = app.clone();
        let registry = Arc::clone(&registry);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let reason = connection(stream, peer, app, &limits, &entry).await;
            registry.remove(id);
            let m = &shared.metrics;
            if let Some(reason) = reason {
                m.http_shed.with_label_values(&[reason]).inc();
            }
            m.http_connections.set(registry.len() as i64);
        });
    }
}

/// Serves one connection; returns why it was cut, if it was.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    entry: &Entry,
) -> Option<&'static str> {
    let _ = stream.set_nodelay(true);
    let activity = Arc::clone(&entry.activity);
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let app = app.clone();
        let mut guard = InFlight::begin(Arc::clone(&activity));
        async move {
            let response = app.oneshot(req.map(Body::new)).await?;
            guard.answered();
            Ok::<_, std::convert::Infallible>(response.map(|b| Body::new(Guarded::new(b, guard))))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_request_head)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(limits.idle_timeout.min(Duration::from_secs(1)));
    loop {
        tokio::select! {
            result = &mut conn => {
                return match result {
                    Err(e) if e.is_timeout() => Some("header_timeout"),
                    Err(e) => {
                        debug!(error = %e, "HTTP connection ended with an error");
                        None
                    }
                    Ok(()) => None,
                };
            }
            () = entry.close.notified() => return None,
            _ = tick.tick() => {
                if entry.activity.idle_past(limits.idle_timeout) {
                    return Some("idle_timeout");
                }
            }
        }
    }
}

/// Marks a request inside the service until dropped (with the response body),
/// and as being handled until its answer is ready.
struct InFlight {
    activity: Arc<Activity>,
    handling: bool,
}

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.handling.fetch_add(1, Ordering::Relaxed);
        Self {
            activity,
            handling: true,
        }
    }

    /// The answer is ready: from now on, time without progress is idle time.
    fn answered(&mut self) {
        if std::mem::take(&mut self.handling) {
            self.activity.touch();
            self.activity.handling.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.handling {
            self.activity.handling.fetch_sub(1, Ordering::Relaxed);
        }
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps `G` alive until the body is sent or dropped.
pub struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G> Guarded<G> {
    pub fn new(inner: Body, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Unpin> hyper::body::Body for Guarded<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body of bytes handed out in pieces, so that whoever holds the body (and a
/// [`Guarded`] guard with it) is there until the answer is nearly all written, not
/// only until it is all buffered; the length is known, so it goes out with a
/// Content-Length.
pub struct Chunked {
    rest: axum::body::Bytes,
    piece: usize,
}

impl Chunked {
    pub fn new(bytes: axum::body::Bytes, piece: usize) -> Self {
        Self {
            rest: bytes,
            piece: piece.max(1),
        }
    }
}

impl hyper::body::Body for Chunked {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.piece.min(self.rest.len());
        let piece = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// The connection's socket, noting every byte that moves.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
