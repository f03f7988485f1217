//! Serving one listener with limits: at most `max_connections` open at once (past the cap the
//! daemon stops accepting, the listen backlog fills and the kernel drops further SYNs), the
//! request head read within `header_read_timeout`, and a connection with no request in flight
//! and no bytes moving for `idle_timeout` closed. Each listener has its own cap, so what TCP
//! clients (any pod can reach the metrics port) do never takes a connection from the unix
//! socket the plugin uses. `axum::serve` has none of these.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// The limits of one listener (`--max-connections`, `--header-read-timeout`, `--idle-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl Listener {
    async fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => Box::new(l.accept().await?.0),
            Listener::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets the open connections finish
/// their requests (the caller bounds that wait).
pub async fn serve(listener: Listener, router: Router, limits: Limits, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open = Arc::new(AtomicUsize::new(0));
    let all_closed = Arc::new(tokio::sync::Notify::new());
    loop {
        // A free slot first: at the cap nothing is accepted, so the kernel's backlog absorbs
        // (and then drops) what comes.
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the connection waits in
                // the backlog.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        open.fetch_add(1, Ordering::AcqRel);
        let (router, stop, open, all_closed) =
            (router.clone(), stop.clone(), Arc::clone(&open), Arc::clone(&all_closed));
        tokio::spawn(async move {
            connection(stream, router, limits, stop).await;
            drop(permit);
            if open.fetch_sub(1, Ordering::AcqRel) == 1 {
                all_closed.notify_waiters();
            }
        });
    }
    // Nothing new is accepted: let go of the address (or the socket) at once.
    drop(listener);
    loop {
        // Registered before the count is read, so a last close in between is not missed.
        let closed = all_closed.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if open.load(Ordering::Acquire) == 0 {
            break;
        }
        closed.await;
    }
}

/// Milliseconds since `start` of the last byte moved, and requests in flight.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

async fn connection(stream: Box<dyn Stream>, router: Router, limits: Limits, mut stop: watch::Receiver<bool>) {
    let activity =
        Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) });
    let io = TokioIo::new(Watched { inner: stream, activity: Arc::clone(&activity) });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (router, activity) = (router.clone(), Arc::clone(&activity));
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
            async move {
                let response = router.oneshot(req.map(Body::new)).await;
                activity.in_flight.fetch_sub(1, Ordering::AcqRel);
                activity.touch();
                response
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let idle = async {
        loop {
            let left = limits.idle_timeout.saturating_sub(activity.idle_for());
            if left.is_zero() && activity.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep(left.max(Duration::from_millis(50))).await;
        }
    };
    tokio::select! {
        _ = &mut conn => return,
        () = idle => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    // Idle or stopping: finish what is in flight, take nothing new.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A stream that notes when bytes last moved.
struct Watched {
    inner: Box<dyn Stream>,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft open-files limit to the hard one (many distributions start services at 1,024
/// soft); returns (before, after).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t differs between libcs
    let before = lim.rlim_cur as u64;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own; raising the soft limit to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((before, lim.rlim_cur as u64))
}
