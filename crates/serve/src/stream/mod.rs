//! Real-time streams for tensor models: a device opens one WebSocket to
//! `GET /v2/models/{name}/stream`, sends samples as they come, and gets one result (and, when
//! the model says so, an alert) per window, each signed and paid as one inference.
//!
//! Why a WebSocket and not SSE: samples flow up and results flow down on the same connection
//! for hours, and the payer's receipts flow up in between. SSE is one-way (the device would need
//! a second channel for samples and receipts), and a WebSocket's close frame carries the reason a
//! stream ended, which is what a device operator needs when a stream is dropped.
//!
//! ## Windows
//! A streamed model takes one input of shape `[N, W]`; each window is `W` consecutive samples.
//! The query string says where windows fall:
//! - `?hop=H` (1 ≤ H ≤ W; default W): every `H` samples once `W` are in (energy demand, traffic);
//! - `?trigger=r-peak&rate=360&before=90`: one window per heartbeat, starting `before` samples
//!   ahead of each R peak found by a causal detector ([`beats`]) at `rate` samples a second.
//!
//! `alert=P` (default 0.5) sets when a result is an alert: a classifier's top class is not its
//! first ("normal") class with probability ≥ P (an output named `probs`), or an `is_anomaly`
//! output is at least 0.5.
//!
//! ## Messages
//! Up: binary frames of little-endian `f32` samples, or text `{"samples": [...]}`; and, from the
//! payer, `{"receipt": "<hex>"}` (a newer cumulative receipt, as the `x-plexus-receipt` header
//! carries on plain requests). Down: first `{"stream": {...}}` (the model, the window and its
//! rule), then per window [`WindowResult`]: its number, its first and end sample (counted from
//! the first sample sent), the outputs, label, score and alert, and the provider's attestation
//! and signature over exactly that window and those outputs (one inference).
//!
//! ## Bounds
//! Frames hold at most [`SAMPLES_PER_FRAME_MAX`] samples; a connection holds at most
//! [`RING_MAX`] samples waiting for their windows and [`PENDING_MAX`] windows waiting to run
//! (for instance on a receipt, when the payer's credit is used up); at most [`OUTGOING_MAX`]
//! results wait to be sent, and a consumer that leaves them there for [`SEND_GRACE`] is dropped
//! with close code 1008 and the reason `slow consumer`. Any bad frame closes the stream with
//! 1007 (bad samples) or 1003 (unknown message), and nothing is computed or billed for it.

pub mod beats;
pub(crate) mod handler;

pub use handler::write_results;

use std::collections::VecDeque;
use std::time::Duration;

use plexus_inference::tensor::{Tensor, TensorRequest, TensorSpec};
use serde::{Deserialize, Serialize};

pub use beats::BeatDetector;

/// Samples in one frame, at most.
pub const SAMPLES_PER_FRAME_MAX: usize = 8192;
/// Bytes in one message, at most (a text frame of that many samples fits).
pub const MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Samples a connection holds, at most (waiting for their windows, or for the payer).
pub const RING_MAX: usize = 1 << 18;
/// Windows waiting to run, at most (a frame's worth at a hop of one sample, twice).
pub const PENDING_MAX: usize = 2 * SAMPLES_PER_FRAME_MAX;
/// Results waiting to be sent, at most.
pub const OUTGOING_MAX: usize = 256;
/// How long results may stay queued before the consumer counts as slow.
pub const SEND_GRACE: Duration = Duration::from_secs(2);
/// A stream with no frame from its device for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);
/// How a close reason for a consumer that does not read starts.
pub const SLOW: &str = "slow consumer";
/// Open streams per server, at most.
pub const STREAMS_MAX: usize = 64;
/// Longest window a stream cuts.
pub const WINDOW_MAX: usize = 1 << 16;

/// WebSocket close codes a stream ends with.
pub mod close {
    /// The stream ended normally.
    pub const NORMAL: u16 = 1000;
    /// The device went quiet for too long, or the server is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// A message that is neither samples nor a receipt.
    pub const UNSUPPORTED: u16 = 1003;
    /// Samples that are not finite numbers, or too many in one frame.
    pub const BAD_DATA: u16 = 1007;
    /// A slow consumer, an unpaid stream, or more waiting than the bounds allow.
    pub const POLICY: u16 = 1008;
    /// The model failed, or the provider was caught lying (at a gateway).
    pub const INTERNAL: u16 = 1011;
}

/// Where a stream's windows fall.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    /// Every `hop` samples, once a window's worth is in.
    Hop(usize),
    /// One window per R peak, starting `before` samples ahead of it.
    RPeak { rate: u32, before: usize },
}

/// A stream's parameters, from its query string.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamParams {
    /// `None` until the window is known: [`StreamParams::for_window`] sets a default hop.
    pub trigger: Option<Trigger>,
    /// Probability at which a classifier's abnormal class is an alert.
    pub alert: f32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    hop: Option<u64>,
    trigger: Option<String>,
    rate: Option<u32>,
    before: Option<u64>,
    alert: Option<f32>,
}

impl StreamParams {
    /// Parses a stream's query string (without the `?`), bounding every value.
    pub fn parse(query: &str) -> Result<StreamParams, String> {
        let q: Query = serde_urlencoded::from_str(query).map_err(|e| format!("bad stream parameters: {e}"))?;
        let alert = q.alert.unwrap_or(0.5);
        if !(alert > 0.0 && alert <= 1.0) {
            return Err(format!("`alert` must be in (0, 1], not {alert}"));
        }
        let trigger = match q.trigger.as_deref() {
            None | Some("hop") => {
                if q.rate.is_some() || q.before.is_some() {
                    return Err("`rate` and `before` go with `trigger=r-peak`".into());
                }
                match q.hop {
                    Some(h) if h == 0 || h > WINDOW_MAX as u64 => {
                        return Err(format!("`hop` must be 1 to {WINDOW_MAX}, not {h}"));
                    }
                    Some(h) => Some(Trigger::Hop(h as usize)),
                    None => None,
                }
            }
            Some("r-peak") => {
                if q.hop.is_some() {
                    return Err("`hop` does not go with `trigger=r-peak`".into());
                }
                let rate = q.rate.unwrap_or(beats::RATE_DEFAULT);
                if !(100..=2000).contains(&rate) {
                    return Err(format!("`rate` must be 100 to 2000 samples a second, not {rate}"));
                }
                let before = q.before.unwrap_or(90);
                if before > WINDOW_MAX as u64 {
                    return Err(format!("`before` must be at most {WINDOW_MAX}, not {before}"));
                }
                Some(Trigger::RPeak { rate, before: before as usize })
            }
            Some(other) => return Err(format!("unknown `trigger` {other:?}: use `hop` or `r-peak`")),
        };
        Ok(StreamParams { trigger, alert })
    }

    /// The trigger for a model whose windows are `window` samples long (checked against it).
    pub fn for_window(&self, window: usize) -> Result<Trigger, String> {
        if window == 0 || window > WINDOW_MAX {
            return Err(format!("a window of {window} samples cannot be streamed"));
        }
        match self.trigger {
            None => Ok(Trigger::Hop(window)),
            Some(Trigger::Hop(h)) if h > window => Err(format!("`hop` {h} is longer than the window ({window})")),
            Some(Trigger::RPeak { before, .. }) if before >= window => {
                Err(format!("`before` {before} must be shorter than the window ({window})"))
            }
            Some(t) => Ok(t),
        }
    }

    /// The query string that asks a provider for these parameters.
    pub fn query(&self) -> String {
        let mut q = format!("alert={}", self.alert);
        match self.trigger {
            None => {}
            Some(Trigger::Hop(h)) => q.push_str(&format!("&hop={h}")),
            Some(Trigger::RPeak { rate, before }) => {
                q.push_str(&format!("&trigger=r-peak&rate={rate}&before={before}"))
            }
        }
        q
    }
}

impl Trigger {
    /// The fewest samples between two windows' starts: the hop, or a refractory quarter second.
    pub fn min_gap(&self) -> u64 {
        match *self {
            Trigger::Hop(h) => h as u64,
            Trigger::RPeak { rate, .. } => u64::from(rate) / 4,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Trigger::Hop(_) => "hop",
            Trigger::RPeak { .. } => "r-peak",
        }
    }
}

/// The window length of a model that can be streamed: one input of shape `[N, W]`.
pub fn window_of(spec: &TensorSpec) -> Result<(String, usize), String> {
    match spec.inputs.as_slice() {
        [input] if input.row_dims().len() == 1 => Ok((input.name.clone(), input.row_elements())),
        _ => Err("only models with one input of shape [N, W] can be streamed".into()),
    }
}

/// The first message of a stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub model: String,
    pub model_id: String,
    pub provider: String,
    pub input: String,
    pub window: usize,
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hop: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub before: Option<usize>,
    pub alert: f32,
    pub labels: Vec<String>,
    /// The gateway's session, when streamed through one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session: Option<String>,
}

impl Hello {
    pub fn new(model: &str, model_id: String, provider: String, input: String, window: usize, t: Trigger) -> Self {
        let (hop, rate, before) = match t {
            Trigger::Hop(h) => (Some(h), None, None),
            Trigger::RPeak { rate, before } => (None, Some(rate), Some(before)),
        };
        Hello {
            model: model.into(),
            model_id,
            provider,
            input,
            window,
            trigger: t.name().into(),
            hop,
            rate,
            before,
            alert: 0.5,
            labels: Vec::new(),
            session: None,
        }
    }
}

/// One output tensor, as sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    pub data: Vec<f32>,
}

/// The result of one window: one inference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WindowResult {
    /// Windows are numbered from 0 in the order they are sent.
    pub window: u64,
    /// First sample of the window, counted from the first sample of the stream.
    pub start: u64,
    /// One past its last sample.
    pub end: u64,
    pub outputs: Vec<OutputTensor>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f32>,
    pub alert: bool,
    /// The provider's attestation (hex) and signature over this window and these outputs.
    pub attestation: String,
    pub signature: String,
    /// Inferences paid on this stream so far, counted by the gateway (absent from a provider).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub paid_inferences: Option<u64>,
}

impl WindowResult {
    /// The outputs as tensors, for hashing (each must be one row).
    pub fn tensors(&self) -> Result<Vec<Tensor>, String> {
        if self.outputs.is_empty() || self.outputs.len() > 16 {
            return Err(format!("{} outputs", self.outputs.len()));
        }
        self.outputs
            .iter()
            .map(|o| {
                let count = o.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if o.shape.first() != Some(&1) || count != Some(o.data.len()) || o.data.len() > 1 << 16 {
                    return Err(format!("output `{}` has shape {:?} and {} values", o.name, o.shape, o.data.len()));
                }
                Ok(Tensor { name: o.name.clone(), shape: o.shape.clone(), data: o.data.clone() })
            })
            .collect()
    }
}

/// The request one window is, as hashed in its attestation.
pub fn window_request(input: &str, window: Vec<f32>) -> TensorRequest {
    let len = window.len();
    TensorRequest { inputs: vec![Tensor { name: input.to_owned(), shape: vec![1, len], data: window }] }
}

/// What the outputs of one window say: its label, score and whether it is an alert.
pub fn judge(labels: &[String], outputs: &[OutputTensor], alert: f32) -> (Option<String>, Option<f32>, bool) {
    if let Some(p) = outputs.iter().find(|o| o.name == "probs") {
        let top = p.data.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
        if let Some((i, &score)) = top {
            let label = labels.get(i).cloned().unwrap_or_else(|| format!("class {i}"));
            return (Some(label), Some(score), i != 0 && score >= alert);
        }
    }
    if let Some(a) = outputs.iter().find(|o| o.name == "is_anomaly") {
        let anomalous = a.data.first().is_some_and(|&v| v >= 0.5);
        let score = outputs.iter().find(|o| o.name == "score").and_then(|s| s.data.first().copied());
        return (Some(if anomalous { "anomaly" } else { "normal" }.into()), score, anomalous);
    }
    (None, None, false)
}

/// A message from a device (or its payer).
#[derive(Debug, PartialEq)]
pub enum Upstream {
    Samples(Vec<f32>),
    Receipt(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextFrame {
    samples: Option<Vec<f64>>,
    receipt: Option<String>,
}

/// Checks samples: finite, and not too many.
fn checked(samples: Vec<f32>) -> Result<Vec<f32>, (u16, String)> {
    if samples.len() > SAMPLES_PER_FRAME_MAX {
        return Err((
            close::BAD_DATA,
            format!("{} samples in one frame; at most {SAMPLES_PER_FRAME_MAX}", samples.len()),
        ));
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        return Err((close::BAD_DATA, format!("sample {i} of the frame is not a finite number")));
    }
    Ok(samples)
}

/// Reads a binary frame: little-endian `f32` samples.
pub fn decode_binary(bytes: &[u8]) -> Result<Vec<f32>, (u16, String)> {
    if !bytes.len().is_multiple_of(4) {
        return Err((close::BAD_DATA, format!("a binary frame of {} bytes is not whole f32 samples", bytes.len())));
    }
    if bytes.len() / 4 > SAMPLES_PER_FRAME_MAX {
        return Err((
            close::BAD_DATA,
            format!("{} samples in one frame; at most {SAMPLES_PER_FRAME_MAX}", bytes.len() / 4),
        ));
    }
    checked(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Reads a text frame: `{"samples": [...]}` or `{"receipt": "<hex>"}`.
pub fn decode_text(text: &str) -> Result<Upstream, (u16, String)> {
    let frame: TextFrame = serde_json::from_str(text).map_err(|e| {
        (close::UNSUPPORTED, format!("a text frame must be {{\"samples\": [...]}} or {{\"receipt\": ...}}: {e}"))
    })?;
    match (frame.samples, frame.receipt) {
        (Some(s), None) => {
            if s.len() > SAMPLES_PER_FRAME_MAX {
                return Err((
                    close::BAD_DATA,
                    format!("{} samples in one frame; at most {SAMPLES_PER_FRAME_MAX}", s.len()),
                ));
            }
            checked(s.into_iter().map(|v| v as f32).collect()).map(Upstream::Samples)
        }
        (None, Some(r)) if r.len() <= 4096 => Ok(Upstream::Receipt(r)),
        (None, Some(_)) => Err((close::UNSUPPORTED, "the receipt is too long".into())),
        _ => Err((close::UNSUPPORTED, "a text frame holds either `samples` or `receipt`".into())),
    }
}

/// The last samples of a stream, by absolute index.
#[derive(Debug, Default)]
pub struct Ring {
    buf: VecDeque<f32>,
    /// Absolute index of `buf[0]`.
    first: u64,
}

impl Ring {
    /// One past the last sample received.
    pub fn end(&self) -> u64 {
        self.first + self.buf.len() as u64
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn push(&mut self, samples: &[f32]) {
        self.buf.extend(samples);
    }

    /// Forgets the samples before `index`.
    pub fn forget_before(&mut self, index: u64) {
        let drop = index.saturating_sub(self.first).min(self.buf.len() as u64);
        self.buf.drain(..drop as usize);
        self.first += drop;
    }

    /// Samples `start..start + len`, if all are held.
    pub fn window(&self, start: u64, len: usize) -> Option<Vec<f32>> {
        let from = start.checked_sub(self.first)? as usize;
        (from + len <= self.buf.len()).then(|| self.buf.range(from..from + len).copied().collect())
    }
}

/// Finds where windows start as samples arrive.
#[derive(Debug)]
pub struct Windower {
    window: usize,
    trigger: Trigger,
    /// Next window start, for [`Trigger::Hop`].
    next: u64,
    detector: Option<BeatDetector>,
    /// Absolute index of the next sample the detector sees.
    seen: u64,
    /// Beat windows found but not yet complete.
    awaiting: VecDeque<u64>,
}

impl Windower {
    pub fn new(window: usize, trigger: Trigger) -> Self {
        let detector = match trigger {
            Trigger::RPeak { rate, .. } => Some(BeatDetector::new(rate)),
            Trigger::Hop(_) => None,
        };
        Windower { window, trigger, next: 0, detector, seen: 0, awaiting: VecDeque::new() }
    }

    /// Feeds samples (the ring already holds them, ending at `end`); returns the starts of the
    /// windows now complete, in order.
    pub fn push(&mut self, samples: &[f32], end: u64) -> Vec<u64> {
        let mut ready = Vec::new();
        match self.trigger {
            Trigger::Hop(hop) => {
                while self.next + self.window as u64 <= end {
                    ready.push(self.next);
                    self.next += hop as u64;
                }
            }
            Trigger::RPeak { before, .. } => {
                let detector = self.detector.as_mut().expect("r-peak windows have a detector");
                for &x in samples {
                    if let Some(r) = detector.push(x)
                        && let Some(start) = r.checked_sub(before as u64)
                    {
                        self.awaiting.push_back(start);
                    }
                    self.seen += 1;
                }
                while self.awaiting.front().is_some_and(|&s| s + self.window as u64 <= end) {
                    ready.extend(self.awaiting.pop_front());
                }
            }
        }
        ready
    }

    /// The oldest sample a future window may start at, given the stream ends at `end`.
    pub fn needs_from(&self, end: u64) -> u64 {
        match self.trigger {
            Trigger::Hop(_) => self.next.min(end),
            Trigger::RPeak { before, .. } => {
                let lookback = self.detector.as_ref().map_or(0, BeatDetector::lookback);
                let future = end.saturating_sub(lookback + before as u64);
                self.awaiting.front().map_or(future, |&s| s.min(future))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_bounded_and_round_trip() {
        let p = StreamParams::parse("hop=32&alert=0.9").unwrap();
        assert_eq!(p.trigger, Some(Trigger::Hop(32)));
        assert_eq!(StreamParams::parse(&p.query()).unwrap(), p);
        let p = StreamParams::parse("trigger=r-peak").unwrap();
        assert_eq!(p.trigger, Some(Trigger::RPeak { rate: 360, before: 90 }));
        assert_eq!(StreamParams::parse(&p.query()).unwrap(), p);
        assert_eq!(StreamParams::parse("").unwrap().for_window(256), Ok(Trigger::Hop(256)));
        for (q, want) in [
            ("hop=0", "hop"),
            ("hop=99999999999", "hop"),
            ("alert=0", "alert"),
            ("alert=NaN", "alert"),
            ("trigger=r-peak&rate=5", "rate"),
            ("trigger=r-peak&hop=2", "hop"),
            ("rate=360", "r-peak"),
            ("trigger=fft", "unknown"),
            ("bogus=1", "bad stream parameters"),
        ] {
            let e = StreamParams::parse(q).expect_err(q);
            assert!(e.contains(want), "{q}: {e}");
        }
        assert!(StreamParams::parse("hop=300").unwrap().for_window(256).is_err());
        assert!(StreamParams::parse("trigger=r-peak&before=256").unwrap().for_window(256).is_err());
    }

    #[test]
    fn frames_decode_or_close_with_a_reason() {
        let bytes: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode_binary(&bytes).unwrap(), vec![1.0, -2.5]);
        assert_eq!(decode_binary(&bytes[..7]).unwrap_err().0, close::BAD_DATA);
        let nan: Vec<u8> = f32::NAN.to_le_bytes().to_vec();
        assert!(decode_binary(&nan).unwrap_err().1.contains("finite"));
        let huge = vec![0u8; 4 * (SAMPLES_PER_FRAME_MAX + 1)];
        assert_eq!(decode_binary(&huge).unwrap_err().0, close::BAD_DATA);
        assert_eq!(decode_text(r#"{"samples":[1,2.5]}"#).unwrap(), Upstream::Samples(vec![1.0, 2.5]));
        assert_eq!(decode_text(r#"{"receipt":"ab"}"#).unwrap(), Upstream::Receipt("ab".into()));
        assert_eq!(decode_text(r#"{"samples":[1e39]}"#).unwrap_err().0, close::BAD_DATA);
        assert_eq!(decode_text(r#"{"samples":[null]}"#).unwrap_err().0, close::UNSUPPORTED);
        assert_eq!(decode_text(r#"{"samples":[1],"receipt":"ab"}"#).unwrap_err().0, close::UNSUPPORTED);
        assert_eq!(decode_text("hello").unwrap_err().0, close::UNSUPPORTED);
    }

    #[test]
    fn hop_windows_fall_every_hop_and_the_ring_keeps_what_they_need() {
        let mut ring = Ring::default();
        let mut w = Windower::new(4, Trigger::Hop(2));
        let mut starts = Vec::new();
        for chunk in (0..11).map(|i| i as f32).collect::<Vec<_>>().chunks(3) {
            ring.push(chunk);
            for start in w.push(chunk, ring.end()) {
                assert_eq!(ring.window(start, 4), Some((start..start + 4).map(|i| i as f32).collect()));
                starts.push(start);
            }
            ring.forget_before(w.needs_from(ring.end()));
        }
        assert_eq!(starts, vec![0, 2, 4, 6]);
        assert_eq!(ring.window(8, 3), Some(vec![8.0, 9.0, 10.0]));
        assert_eq!(ring.window(6, 4), None, "forgotten");
        assert_eq!(ring.window(8, 4), None, "not there yet");
    }

    #[test]
    fn judging_classifiers_and_anomaly_detectors() {
        let t = |name: &str, data: Vec<f32>| OutputTensor {
            name: name.into(),
            shape: vec![1, data.len()],
            datatype: "FP32".into(),
            data,
        };
        let labels = vec!["normal".to_string(), "abnormal".to_string()];
        assert_eq!(judge(&labels, &[t("probs", vec![0.2, 0.8])], 0.5), (Some("abnormal".into()), Some(0.8), true));
        assert!(!judge(&labels, &[t("probs", vec![0.2, 0.8])], 0.9).2);
        assert!(!judge(&labels, &[t("probs", vec![0.9, 0.1])], 0.5).2);
        let traffic = [t("score", vec![4.2]), t("is_anomaly", vec![1.0])];
        assert_eq!(judge(&[], &traffic, 0.5), (Some("anomaly".into()), Some(4.2), true));
        assert_eq!(judge(&[], &[t("forecast", vec![1.0; 48])], 0.5), (None, None, false));
    }
}
