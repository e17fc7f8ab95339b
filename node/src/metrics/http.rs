//! A deliberately small HTTP/1.1 responder for scrapes: `GET /metrics`
//! answers the metrics, anything else an error status, and every
//! connection closes after one answer. Requests are bounded in size
//! ([`MAX_REQUEST`]) and time ([`REQUEST_TIME`]), and at most
//! [`MAX_CONNECTIONS`] are served at a time (more are closed at once), so a
//! stray client cannot hold the node's memory or tasks. There is no
//! authentication: keep the address on loopback or a private interface.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The request line and headers may take this many bytes at most.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// A request must arrive, and its answer go out, within this.
pub(crate) const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Scrapes served at a time.
pub(crate) const MAX_CONNECTIONS: usize = 8;

/// The OpenMetrics text format (what `prometheus-client` writes; Prometheus reads it).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `render()` at `GET /metrics` on `listener` until `cancel`.
pub(crate) async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> Option<String> + Send + Sync>, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: try again shortly.
                    debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many scrapes at once; closing this one");
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if tokio::time::timeout(REQUEST_TIME, answer(stream, &*render)).await.is_err() {
                debug!(%peer, "metrics: request timed out");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, render: &(dyn Fn() -> Option<String> + Send + Sync)) {
    let (status, body) = match read_head(&mut stream).await {
        Ok(head) => route(&head, render),
        Err(status) => (status, String::new()),
    };
    let content_type = if status.starts_with("200") { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads until the end of the headers; `Err` is the status to answer.
async fn read_head(stream: &mut TcpStream) -> Result<String, &'static str> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| "400 Bad Request");
        }
        if buf.len() >= MAX_REQUEST {
            return Err("431 Request Header Fields Too Large");
        }
        let n = stream.read(&mut chunk).await.map_err(|_| "400 Bad Request")?;
        if n == 0 {
            return Err("400 Bad Request");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status and body for a request head.
fn route(head: &str, render: &(dyn Fn() -> Option<String> + Send + Sync)) -> (&'static str, String) {
    let mut parts = head.lines().next().unwrap_or("").split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return ("400 Bad Request", "expected an HTTP/1.x request line\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => match render() {
            Some(text) => ("200 OK", text),
            None => ("503 Service Unavailable", "the node has left\n".into()),
        },
        (_, "/metrics") => ("405 Method Not Allowed", "only GET /metrics\n".into()),
        _ => ("404 Not Found", "metrics are at GET /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = || Some("x".to_string());
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: a", &r), ("200 OK", "x".into()));
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0", &r).0, "200 OK");
        assert_eq!(route("POST /metrics HTTP/1.1", &r).0, "405 Method Not Allowed");
        assert_eq!(route("GET / HTTP/1.1", &r).0, "404 Not Found");
        assert_eq!(route("GET /metrics", &r).0, "400 Bad Request");
        assert_eq!(route("", &r).0, "400 Bad Request");
        assert_eq!(route("GET /metrics HTTP/1.1", &|| None).0, "503 Service Unavailable");
    }
}
