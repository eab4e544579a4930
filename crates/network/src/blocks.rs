//! Block dissemination, by network version.
//!
//! - **v1** sends each proposed block as consensus encodes it, on the blocks channel.
//! - **v2** sends it on a channel of its own as a frame: one tag byte, then either the block
//!   compressed with zstd (`TAG_ZSTD`) or, when compression would not make it smaller, the block
//!   as is (`TAG_RAW`). A frame is therefore never more than one byte larger than the block,
//!   so the network's message size bound still holds. Blocks repeat addresses, model names,
//!   session ids and amounts from transaction to transaction; signatures do not compress.
//!
//! The sender switches to v2 once the chain's active network version is 2 or more: by then
//! every connected peer speaks v2, because [`crate::hello`] blocks peers that cannot speak the
//! active version. The receiver takes both channels at any time (a peer that committed the
//! activating block a moment earlier already sends v2), and each peer's messages on either
//! channel stay under that channel's rate limit.
//!
//! A v2 frame is decoded with its declared size checked first: a frame that claims more than
//! the largest message, declares no size, or decompresses to anything but what it declared is
//! dropped and counted, without allocating more than the bound.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::SystemTime;

use commonware_actor::{Feedback, Unreliable};
use commonware_p2p::{CheckedSender, LimitedSender, Message, Receiver, Recipients};
use commonware_runtime::telemetry::metrics::{Counter, MetricsExt as _};
use commonware_runtime::{IoBuf, IoBufs, Metrics};
use tracing::debug;

use crate::PublicKey;

/// The first network version that sends blocks as v2 frames.
pub const V2: u16 = 2;
/// A v2 frame holding the block as is.
pub const TAG_RAW: u8 = 0;
/// A v2 frame holding the block compressed with zstd.
pub const TAG_ZSTD: u8 = 1;
/// zstd's default level: about 300 MB/s on one core here, far above any block rate.
const LEVEL: i32 = 3;

/// Why a v2 frame was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    Empty,
    UnknownTag(u8),
    /// The compressed block declares no size, or more than the bound.
    Size {
        declared: Option<u64>,
        max: usize,
    },
    /// Not a zstd frame, or it does not decompress to the size it declared.
    Corrupt,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Empty => write!(f, "empty frame"),
            FrameError::UnknownTag(t) => write!(f, "unknown frame tag {t}"),
            FrameError::Size { declared: None, .. } => write!(f, "compressed block without a declared size"),
            FrameError::Size { declared: Some(d), max } => {
                write!(f, "compressed block declares {d} bytes (most {max})")
            }
            FrameError::Corrupt => write!(f, "compressed block does not decompress to its declared size"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes a block as a v2 frame.
pub fn encode(block: &[u8]) -> Vec<u8> {
    match zstd::bulk::compress(block, LEVEL) {
        Ok(z) if z.len() < block.len() => {
            let mut frame = Vec::with_capacity(1 + z.len());
            frame.push(TAG_ZSTD);
            frame.extend_from_slice(&z);
            frame
        }
        // Incompressible (or zstd failed, which only a bug can make it do): send it as is.
        _ => {
            let mut frame = Vec::with_capacity(1 + block.len());
            frame.push(TAG_RAW);
            frame.extend_from_slice(block);
            frame
        }
    }
}

/// Decodes a v2 frame into the block bytes, refusing anything larger than `max` bytes.
pub fn decode(frame: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let (&tag, body) = frame.split_first().ok_or(FrameError::Empty)?;
    match tag {
        TAG_RAW if body.len() <= max => Ok(body.to_vec()),
        TAG_RAW => Err(FrameError::Size { declared: Some(body.len() as u64), max }),
        TAG_ZSTD => {
            let declared = zstd::zstd_safe::get_frame_content_size(body).ok().flatten();
            let size = match declared {
                Some(d) if d <= max as u64 => d as usize,
                _ => return Err(FrameError::Size { declared, max }),
            };
            let mut out = vec![0u8; size];
            match zstd::bulk::decompress_to_buffer(body, &mut out[..]) {
                Ok(n) if n == size => Ok(out),
                _ => Err(FrameError::Corrupt),
            }
        }
        other => Err(FrameError::UnknownTag(other)),
    }
}

/// What block dissemination sends and refuses, for `/metrics`.
#[derive(Clone)]
pub struct Traffic {
    /// Block bytes handed to the network, times the recipients they went to.
    payload: Counter,
    /// Bytes actually put on the wire for them (v2 frames are smaller), times recipients.
    wire: Counter,
    /// Blocks sent, counted once per recipient.
    sent: Counter,
    /// v2 frames received and dropped as malformed or oversized.
    refused: Counter,
}

impl Traffic {
    pub fn new(context: &impl Metrics) -> Self {
        Traffic {
            payload: context.counter("block_payload_bytes", "Block bytes sent to peers, before framing"),
            wire: context.counter("block_wire_bytes", "Bytes sent to peers for blocks, as framed on the wire"),
            sent: context.counter("blocks_sent", "Blocks sent to peers, once per recipient"),
            refused: context.counter("block_frames_refused", "Block frames from peers dropped as malformed"),
        }
    }
}

/// Sends blocks on the v1 or the v2 channel, by the chain's active network version.
#[derive(Clone)]
pub struct BlockSender<S> {
    v1: S,
    v2: S,
    active: Arc<dyn Fn() -> u16 + Send + Sync>,
    traffic: Traffic,
}

impl<S> BlockSender<S> {
    /// `active` reads the chain's active network version.
    pub fn new(v1: S, v2: S, active: impl Fn() -> u16 + Send + Sync + 'static, traffic: Traffic) -> Self {
        BlockSender { v1, v2, active: Arc::new(active), traffic }
    }
}

impl<S: LimitedSender<PublicKey = PublicKey>> LimitedSender for BlockSender<S> {
    type PublicKey = PublicKey;
    type Checked<'a>
        = Checked<'a, S>
    where
        Self: 'a;

    fn check(&mut self, recipients: Recipients<PublicKey>) -> Result<Self::Checked<'_>, SystemTime> {
        let framed = (self.active)() >= V2;
        let channel = if framed { &mut self.v2 } else { &mut self.v1 };
        let inner = channel.check(recipients)?;
        Ok(Checked { inner, framed, traffic: &self.traffic })
    }
}

/// Recipients within their rate limit on the channel of the active version.
pub struct Checked<'a, S: LimitedSender + 'a> {
    inner: S::Checked<'a>,
    framed: bool,
    traffic: &'a Traffic,
}

impl<'a, S: LimitedSender<PublicKey = PublicKey> + 'a> CheckedSender for Checked<'a, S> {
    type PublicKey = PublicKey;

    fn recipients(&self) -> Vec<PublicKey> {
        self.inner.recipients()
    }

    fn send(self, message: impl Into<IoBufs> + Send, priority: bool) -> Unreliable<Feedback> {
        let recipients = self.inner.recipients().len() as u64;
        let block = message.into().coalesce();
        let payload = block.len() as u64;
        let (wire, message) = if self.framed {
            let frame = encode(block.as_ref());
            (frame.len() as u64, IoBuf::from(frame))
        } else {
            (payload, block)
        };
        let feedback = self.inner.send(message, priority);
        if feedback.accepted() {
            self.traffic.payload.inc_by(payload * recipients);
            self.traffic.wire.inc_by(wire * recipients);
            self.traffic.sent.inc_by(recipients);
        }
        feedback
    }
}

/// Receives blocks from both channels, v2 frames decoded.
#[derive(Debug)]
pub struct BlockReceiver<R> {
    v1: R,
    v2: R,
    max: usize,
    refused: Counter,
}

impl<R> BlockReceiver<R> {
    /// `max` bounds a decoded block (the largest message the network carries).
    pub fn new(v1: R, v2: R, max: usize, traffic: &Traffic) -> Self {
        BlockReceiver { v1, v2, max, refused: traffic.refused.clone() }
    }
}

impl<R: Receiver<PublicKey = PublicKey>> Receiver for BlockReceiver<R> {
    type Error = R::Error;
    type PublicKey = PublicKey;

    async fn recv(&mut self) -> Result<Message<PublicKey>, R::Error> {
        loop {
            // Biased towards v2: once it is active, v1 carries only stragglers.
            let framed = tokio::select! {
                biased;
                m = self.v2.recv() => m?,
                m = self.v1.recv() => return m,
            };
            let (peer, frame) = framed;
            match decode(frame.as_ref(), self.max) {
                Ok(block) => return Ok((peer, IoBuf::from(block))),
                Err(e) => {
                    self.refused.inc();
                    debug!(target: "network::blocks", %peer, "dropped a block frame: {e}");
                }
            }
        }
    }

    fn capacity(&self) -> NonZeroUsize {
        self.v1.capacity().saturating_add(self.v2.capacity().get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block-like payload: repeated structure with some incompressible bytes.
    fn block_like(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..n {
            out.extend_from_slice(b"smollm2-135m-instruct");
            out.extend_from_slice(&(i as u64).to_le_bytes());
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn frames_round_trip_and_shrink_repetitive_blocks() {
        let block = block_like(200);
        let frame = encode(&block);
        assert_eq!(frame[0], TAG_ZSTD);
        assert!(frame.len() < block.len(), "{} >= {}", frame.len(), block.len());
        assert_eq!(decode(&frame, block.len()).unwrap(), block);
    }

    #[test]
    fn an_incompressible_block_costs_one_byte() {
        let block: Vec<u8> = block_like(50).chunks(37).flat_map(|c| c.iter().rev().copied()).collect();
        let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for b in [random, block, vec![], vec![7]] {
            let frame = encode(&b);
            assert!(frame.len() <= b.len() + 1, "{} > {} + 1", frame.len(), b.len());
            assert_eq!(decode(&frame, b.len()).unwrap(), b);
        }
    }

    #[test]
    fn frames_larger_than_the_bound_are_refused_before_allocating() {
        let block = vec![0u8; 1 << 20];
        let frame = encode(&block);
        assert!(frame.len() < 1024, "a megabyte of zeros compresses to {} bytes", frame.len());
        assert_eq!(
            decode(&frame, (1 << 20) - 1),
            Err(FrameError::Size { declared: Some(1 << 20), max: (1 << 20) - 1 })
        );
        let mut raw = vec![TAG_RAW];
        raw.extend_from_slice(&[1; 100]);
        assert!(matches!(decode(&raw, 99), Err(FrameError::Size { .. })));
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(decode(&[], 100), Err(FrameError::Empty));
        assert_eq!(decode(&[9, 1, 2], 100), Err(FrameError::UnknownTag(9)));
        assert!(decode(&[TAG_ZSTD, 1, 2, 3], 100).is_err());
        // A valid frame, truncated: its declared size no longer matches what decompresses.
        let block = block_like(20);
        let frame = encode(&block);
        assert!(decode(&frame[..frame.len() - 3], block.len()).is_err());
        // A flipped byte in the body: an error, or (zstd frames carry no checksum by default)
        // other bytes of exactly the declared size; never more, never a panic.
        let mut bad = frame.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        if let Ok(out) = decode(&bad, block.len()) {
            assert_eq!(out.len(), block.len());
        }
    }
}
