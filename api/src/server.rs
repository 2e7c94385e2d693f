//! The HTTP listener: hyper's HTTP/1.1 connection driver under Kiln's own accept loop, because
//! `axum::serve` sets no timer and so gives a client that sends half a header its connection
//! for ever. Here every connection is bounded: the header of each request must arrive within
//! `header_timeout` (hyper starts that clock when it begins waiting for a request, so the same
//! bound closes connections idle between keep-alive requests), each read of a request body must
//! make progress within `body_timeout`, and at most `max_connections` are open at once (past
//! that, new connections wait in the kernel's backlog until one closes, rather than taking file
//! descriptors the process needs). Shutdown stops accepting, closes idle connections and lets
//! requests in flight finish.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long connections and their parts may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// For a request's header to arrive, counted from when the connection starts waiting for
    /// it: a new connection, or one idle after its last answer.
    pub header_timeout: Duration,
    /// For each piece of a request body to arrive once the handler reads it.
    pub body_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then finishes what is in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut stop = std::pin::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was taken: wait a
                    // moment rather than spin, then take the next one.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(socket), service));
        tokio::spawn(async move {
            // A header that never finished, a client gone mid-request: the connection's end,
            // not the server's concern.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
