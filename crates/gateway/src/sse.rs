//! A bounded reader of server-sent events from an upstream provider.

use bytes::Bytes;
use futures::{Stream, StreamExt as _};

/// Largest single event accepted from a provider, in bytes.
pub const EVENT_BYTES_MAX: usize = 1 << 20;

/// Why reading a stream stopped before `[DONE]`.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("connection lost: {0}")]
    Transport(String),
    #[error("an event was larger than {EVENT_BYTES_MAX} bytes")]
    TooLarge,
}

/// Splits a byte stream into the `data` of each event (multi-line data joined with `\n`).
pub struct Events<S> {
    inner: S,
    buffer: Vec<u8>,
}

impl<S, E> Events<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(inner: S) -> Self {
        Events { inner, buffer: Vec::new() }
    }

    /// The next event's data; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<String, SseError>> {
        loop {
            if let Some((end, sep)) = find_boundary(&self.buffer) {
                let raw: Vec<u8> = self.buffer.drain(..end + sep).collect();
                let text = String::from_utf8_lossy(&raw[..end]);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
                    .collect();
                if data.is_empty() {
                    continue; // a comment (keep-alive) or an event without data
                }
                return Some(Ok(data.join("\n")));
            }
            if self.buffer.len() > EVENT_BYTES_MAX {
                return Some(Err(SseError::TooLarge));
            }
            match self.inner.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(SseError::Transport(e.to_string()))),
                None => return None,
            }
        }
    }
}

/// Where the first event ends: its length and the separator's.
fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_events_across_chunks_and_skips_comments() {
        let parts: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b": keep-alive\n\ndata: {\"a\"")),
            Ok(Bytes::from_static(b":1}\n\ndata: line one\ndata: line two\r\n\r\n")),
            Ok(Bytes::from_static(b"data: [DONE]\n\n")),
        ];
        let mut events = Events::new(futures::stream::iter(parts));
        assert_eq!(events.next().await.unwrap().unwrap(), "{\"a\":1}");
        assert_eq!(events.next().await.unwrap().unwrap(), "line one\nline two");
        assert_eq!(events.next().await.unwrap().unwrap(), "[DONE]");
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn refuses_oversized_events_and_reports_transport_errors() {
        let big = vec![b'x'; EVENT_BYTES_MAX + 10];
        let parts: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from(big))];
        let mut events = Events::new(futures::stream::iter(parts));
        assert!(matches!(events.next().await, Some(Err(SseError::TooLarge))));
        let parts: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from_static(b"data: x")), Err("reset".into())];
        let mut events = Events::new(futures::stream::iter(parts));
        assert!(matches!(events.next().await, Some(Err(SseError::Transport(_)))));
    }
}
