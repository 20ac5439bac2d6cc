//! Serving connections with bounds (SPEC §5.11): the accept loop behind [`crate::run`].
//!
//! - **Connection cap**: a semaphore of [`Limits::max_connections`] permits; the loop takes a
//!   permit *before* it accepts, so beyond the cap new connections wait in the kernel's accept
//!   queue (no file descriptor, no memory spent on them) and are accepted as soon as one of the
//!   allowed connections ends. Reaching the cap is logged at most once a second.
//! - **Header timeout**: a request's head must arrive within [`Limits::header_timeout`],
//!   counted from the connection's opening for its first request and from the first byte of
//!   the head for later ones. (hyper's own `header_read_timeout` is not used: it starts as soon
//!   as a keep-alive connection goes idle, so it would also cut idle connections at 10 s.)
//! - **Idle timeout**: a keep-alive connection with no request in flight and no byte of a new
//!   one is closed after [`Limits::idle_timeout`].
//! - **Body timeout**: a request's body must arrive within [`Limits::body_timeout`] of its
//!   head; reading it later fails, the handler answers 400 and the connection is closed. Bodies
//!   are only read by handlers, after the caller is authorised, so an unauthenticated client
//!   never gets its body buffered.
//! - **Graceful shutdown**: when the shutdown future resolves, the loop stops accepting, idle
//!   connections close at once, in-flight requests finish, and [`serve`] returns when every
//!   connection has ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Bounds on every connection (SPEC §5.11). `Limits::default()` is the contract's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request's head (request line and headers) must arrive within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this, counted from its head.
    pub body_timeout: Duration,
    /// A keep-alive connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets the
/// connections finish their in-flight requests and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // At most 2^24 (far beyond any fd limit), so `acquire_many` below takes a u32.
    let max = limits.max_connections.clamp(1, 1 << 24);
    let permits = Arc::new(Semaphore::new(max));
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut full_logged: Option<Instant> = None;
    let mut error_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // Take a permit before accepting: beyond the cap, connections wait in the kernel's
        // accept queue.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if once_a_second(&mut full_logged) {
                    tracing::warn!(
                        max_connections = max,
                        "connection limit reached: new connections wait in the accept queue \
                         until one ends (--max-connections)"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection that died in the queue: the
                    // loop must go on (the fds come back as connections end).
                    if once_a_second(&mut error_logged) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                    }
                    if !is_connection_error(&e) {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            connection(stream, peer, router, limits, stop).await;
            tracing::trace!(%peer, "connection closed");
            drop(permit);
        });
    }
    // Stop accepting, tell every connection to finish, and wait until all have.
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

fn once_a_second(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    match last {
        Some(at) if now.duration_since(*at) < Duration::from_secs(1) => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// What the watchdog of one connection looks at.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests handed to the router whose response has not been written yet.
    in_flight: u32,
    /// When the connection last had nothing in flight (or opened).
    idle_since: Instant,
    /// When the first byte of the next request's head arrived, while nothing was in flight.
    head_started: Option<Instant>,
    /// Whether a request was served (then waiting is keep-alive idleness, not a slow head).
    served: bool,
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    Header,
    Idle,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
                served: false,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection is to be cut, and why; `None` while a request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let s = self.lock();
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.head_started {
            Some(at) => (at + limits.header_timeout, Expiry::Header),
            None if !s.served => (s.idle_since + limits.header_timeout, Expiry::Header),
            None => (s.idle_since + limits.idle_timeout, Expiry::Idle),
        })
    }

    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.head_started = None;
        s.served = true;
        drop(s);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// One request in flight; dropped when its response has been written (or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        let body_timeout = limits.body_timeout;
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = activity.begin();
            let deadline = Instant::now() + body_timeout;
            let router = router.clone();
            async move {
                let mut req: Request = req.map(|body| {
                    Body::new(DeadlineBody {
                        inner: body,
                        deadline,
                        limit: body_timeout,
                        sleep: None,
                    })
                });
                // The peer's address, for handlers that count by source (auth.denied).
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let resp = router.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| {
                    Body::new(Tracked {
                        inner: body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = activity.deadline(&limits);
        let expire = async {
            match deadline {
                Some((at, why)) => {
                    tokio::time::sleep_until(at).await;
                    why
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            why = expire => {
                // The state may have moved on since the deadline was computed.
                if let Some((at, _)) = activity.deadline(&limits) {
                    if at <= Instant::now() {
                        match why {
                            Expiry::Header => tracing::debug!(
                                timeout_seconds = limits.header_timeout.as_secs_f64(),
                                "closing a connection: request headers did not arrive in time"
                            ),
                            Expiry::Idle => tracing::trace!("closing an idle keep-alive connection"),
                        }
                        // Nothing is in flight: dropping the connection closes the socket.
                        return;
                    }
                }
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The socket, telling the watchdog when the bytes of a new request start to arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reading a request body after its deadline fails with this.
#[derive(Debug)]
pub(crate) struct BodyTimeout(pub(crate) Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that must be complete by `deadline` (the whole body, not each chunk: a
/// body trickled a byte at a time is cut off too).
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's [`InFlight`] until hyper has written it.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
