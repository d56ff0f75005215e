//! `serve`'s accept loop: a cap on open connections, a header read timeout, a deadline for each request
//! body, and a graceful shutdown that ends within a bounded time.
//!
//! Our own loop rather than `axum::serve`, which has no header timeout and no connection limit: a client
//! sending half a request could keep its socket for ever, and enough of them exhausted file descriptors.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

/// The limits of one listener's connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request's header must arrive within this; also how long an idle keep-alive connection stays.
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this after its header.
    pub body_read_timeout: Duration,
    /// Open connections per listener.
    pub max_connections: usize,
    /// After shutdown begins, how long requests in flight may take before their connections are closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let d = crate::config::ServeSettings::default();
        Self {
            header_read_timeout: Duration::from_secs(d.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(d.body_read_timeout_secs),
            max_connections: d.max_connections,
            shutdown_grace: Duration::from_secs(d.shutdown_grace_secs),
        }
    }
}

/// The most a connection buffers while reading a header or body chunk (hyper's default is 400 KiB, which
/// times the connection cap is a lot of memory to hand to clients that never finish a request).
const MAX_BUF: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` turns true, then stops accepting, closes connections
/// with no request in progress at once, lets requests in flight finish for up to `limits.shutdown_grace`,
/// and closes what is left.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog rather than take a descriptor.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: wait rather than spin; the backlog keeps the client.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            builder.clone(),
            router.clone(),
            limits.body_read_timeout,
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "finishing requests in flight");
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            grace_secs = limits.shutdown_grace.as_secs(),
            "shutdown grace over: closing connections with requests still in flight"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Resolves once shutdown has begun.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns is released here, before any other await.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Errors about one incoming connection (it went away before we took it), not about the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One connection, holding its slot until it closes.
async fn connection(
    stream: tokio::net::TcpStream,
    builder: hyper::server::conn::http1::Builder,
    router: Router,
    body_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    // Requests of this connection whose handler has not returned yet.
    let busy = Arc::new(AtomicUsize::new(0));
    let service = {
        let busy = busy.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let guard = Busy::enter(&busy);
            let router = router.clone();
            async move {
                let request = request.map(|body| with_deadline(body, body_timeout));
                let response = router.oneshot(request).await;
                drop(guard);
                response
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            return;
        }
        _ = stopped(&mut shutdown) => {}
    }
    // Idle, or in the middle of a header: nothing to finish. Dropping the connection closes it.
    if busy.load(Ordering::Acquire) == 0 {
        return;
    }
    // A request in progress: answer it, then close (keep-alive off).
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Counts a request as in progress until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body error when the whole body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(Duration);

/// Whether an error (a body error, an extractor's rejection) comes from our body read deadline.
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<BodyTimeout>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn with_deadline(body: Incoming, timeout: Duration) -> Body {
    if http_body::Body::is_end_stream(&body) {
        return Body::new(body);
    }
    Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        timeout,
    })
}

/// A request body that fails once its deadline passes: a client trickling a body keeps its request (and
/// its in-flight slot) for a bounded time only.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let timeout = self.timeout;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The in-flight budget of one class of routes: beyond it, 503 at once, so a flood of one class (webhooks,
/// the admin API, health and metrics) leaves the others answering.
#[derive(Debug, Clone)]
pub struct Gate {
    class: &'static str,
    permits: Arc<Semaphore>,
}

impl Gate {
    /// A budget of `limit` requests at once for `class`.
    pub fn new(class: &'static str, limit: usize) -> Self {
        Self {
            class,
            permits: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// A slot, or `None` when the class is at its limit.
    pub fn try_enter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            tracing::debug!(class = self.class, "in-flight limit reached");
        }
        permit
    }
}
