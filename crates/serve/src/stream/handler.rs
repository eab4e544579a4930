//! `GET /v2/models/{name}/stream`: the provider's side of a stream (see the parent module).
//!
//! One task reads frames and runs windows; another writes results. Windows run on the blocking
//! pool, a frame's worth at a time, each metered as a request of one inference: the payer's
//! credit is checked before each runs, and a window that finds it used up waits (with the
//! samples after it, within the bounds) for the next receipt.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use plexus_inference::Engine;
use plexus_inference::tensor::{FP32, TensorSpec};
use plexus_types::{Attestation, Hash, Sig};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::*;
use crate::ServeError;
use crate::api::{AppState, batch_attestation};
use crate::dishonest::Lie;
use crate::kserve::{request_hash, settle};
use crate::metering::{Endpoint, MeterRequest, Usage};
use crate::metrics::Metrics;

type Shared = Arc<AppState>;

/// The header a payer's receipt travels in (the same as on plain requests).
const HEADER_RECEIPT: &str = "x-plexus-receipt";
/// How long windows wait for a receipt once the payer's credit is used up.
const PAYMENT_WAIT: Duration = Duration::from_secs(10);

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What every window of one stream shares.
struct Ctx {
    state: Shared,
    engine: Arc<dyn Engine>,
    spec: TensorSpec,
    input: String,
    window: usize,
    alert: f32,
    /// The upgrade request's headers: the session and token a payer sent.
    headers: HeaderMap,
    /// A signed attestation of nothing, for admissions that only hand over a receipt.
    nothing: (Attestation, Sig),
}

/// Why a stream stops.
type Closing = (u16, String);

/// The reading side's state.
struct Stream {
    ring: Ring,
    windower: Windower,
    /// Window starts waiting to run, in order.
    pending: VecDeque<u64>,
    next_window: u64,
    /// Since when windows have waited for a receipt, and why.
    unpaid: Option<(Instant, String)>,
}

pub(crate) async fn stream(
    State(state): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    state.count_request("stream");
    let Some(engine) = state.engines.iter().find(|e| e.info().name == name || e.info().id.to_string() == name).cloned()
    else {
        return refuse(StatusCode::NOT_FOUND, format!("model `{name}` is not served here"));
    };
    let Some(spec) = engine.tensor_spec().cloned() else {
        return refuse(StatusCode::BAD_REQUEST, format!("model `{name}` is not a tensor model; it cannot be streamed"));
    };
    let (input, window) = match window_of(&spec) {
        Ok(w) => w,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let params = match StreamParams::parse(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let trigger = match params.for_window(window) {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("open this route as a WebSocket: {e}")),
    };
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        state.metrics.error("busy");
        let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, format!("this server has {STREAMS_MAX} streams open"));
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(5));
        return r;
    };
    // The payer's credentials are checked before the upgrade, so an unpaid stream gets the same
    // 401/402/403 a plain request would.
    let info = engine.info().clone();
    let probe = MeterRequest {
        request_id: state.next_request.fetch_add(1, Ordering::Relaxed),
        model: info.id,
        endpoint: Endpoint::Infer,
        headers: &headers,
        prompt_tokens: 0,
        max_tokens: 0,
    };
    let none = batch_attestation(info.id, Hash::ZERO, Hash::ZERO, 0, 0);
    let signature = none.sign(&state.key, &state.config.chain_id);
    match state.metering.begin(&probe) {
        Ok(ticket) => state.metering.finish(ticket, &Usage::default(), &none, &signature),
        Err(e) => {
            state.metrics.error(e.kind_label());
            return refuse(e.status(), e.to_string());
        }
    }
    let mut hello =
        Hello::new(&info.name, info.id.to_string(), state.provider.to_string(), input.clone(), window, trigger);
    hello.alert = params.alert;
    hello.labels = spec.labels.clone();
    let ctx =
        Arc::new(Ctx { state, engine, spec, input, window, alert: params.alert, headers, nothing: (none, signature) });
    upgrade
        .max_message_size(MESSAGE_BYTES_MAX)
        .max_frame_size(MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| run(socket, ctx, trigger, hello, permit))
}

pub(crate) fn close_message(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

async fn run(socket: WebSocket, ctx: Arc<Ctx>, trigger: Trigger, hello: Hello, _permit: OwnedSemaphorePermit) {
    let label = Metrics::model(&ctx.engine.info().name);
    ctx.state.metrics.streams_open.get_or_create(&label).inc();
    let (sink, mut source) = socket.split();
    let (tx, rx) = mpsc::channel::<Message>(OUTGOING_MAX);
    let (closing_tx, closing_rx) = watch::channel::<Option<Closing>>(None);
    let writer = tokio::spawn(write_results(sink, rx, closing_rx));
    let hello = serde_json::json!({ "stream": hello }).to_string();
    let mut end: Closing = (close::NORMAL, String::new());
    if tx.send(Message::Text(hello.into())).await.is_err() {
        end = (close::GOING_AWAY, "the connection closed".into());
    }
    let mut st = Some(Stream {
        ring: Ring::default(),
        windower: Windower::new(ctx.window, trigger),
        pending: VecDeque::new(),
        next_window: 0,
        unpaid: None,
    });
    while end.0 == close::NORMAL {
        let frame = match tokio::time::timeout(IDLE, source.next()).await {
            Err(_) => {
                end = (close::GOING_AWAY, format!("idle: no samples for {} s", IDLE.as_secs()));
                break;
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(m))) => m,
        };
        let upstream = match frame {
            Message::Binary(b) => decode_binary(&b).map(Upstream::Samples),
            Message::Text(t) => decode_text(&t),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => break,
        };
        let upstream = match upstream {
            Ok(u) => u,
            Err(c) => {
                end = c;
                break;
            }
        };
        let mut s = st.take().expect("stream state is put back after each frame");
        let run_ctx = ctx.clone();
        let done = tokio::task::spawn_blocking(move || {
            let out = s.take(&run_ctx, upstream);
            (s, out)
        })
        .await;
        let (s, out) = match done {
            Ok(v) => v,
            Err(e) => {
                end = (close::INTERNAL, format!("the stream's task failed: {e}"));
                break;
            }
        };
        st = Some(s);
        let (results, stop) = out;
        for r in results {
            if tx.send_timeout(Message::Text(r.into()), SEND_GRACE).await.is_err() {
                end = (close::POLICY, format!("{SLOW}: results waited more than {} s", SEND_GRACE.as_secs()));
                ctx.state.metrics.error("slow_consumer");
                break;
            }
        }
        if let Some(c) = stop
            && end.0 == close::NORMAL
        {
            end = c;
        }
    }
    if end.0 != close::NORMAL {
        tracing::debug!(target: "serve::stream", code = end.0, reason = %end.1, "stream closed");
    }
    if end.0 != close::NORMAL {
        let _ = closing_tx.send(Some(end));
    }
    drop(tx);
    // The closing handshake: what the device still sends is read and dropped until it closes
    // too, so the connection ends with the close frame (and the reason), not a reset.
    let drain = async {
        while let Ok(Some(Ok(m))) = tokio::time::timeout(IDLE, source.next()).await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::join!(writer, drain);
    ctx.state.metrics.streams_open.get_or_create(&label).dec();
}

/// Sends queued results until the queue ends (a normal close, after everything queued) or a
/// close is signalled: a slow consumer's at once, skipping what is queued; any other after
/// what is queued. Shared by providers and gateways.
pub async fn write_results(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    mut closing: watch::Receiver<Option<(u16, String)>>,
) {
    let mut watching = true;
    loop {
        let message = tokio::select! {
            biased;
            changed = closing.changed(), if watching => {
                match changed.ok().and_then(|()| closing.borrow().clone()) {
                    // A slow consumer's queue is the problem: it is dropped. Any other end
                    // sends what was already computed (and paid) first.
                    Some((code, why)) if why.starts_with(SLOW) => close_message(code, &why),
                    Some((code, why)) => match rx.try_recv() {
                        Ok(m) => {
                            closing.mark_changed();
                            m
                        }
                        Err(_) => close_message(code, &why),
                    },
                    None => {
                        watching = false;
                        continue;
                    }
                }
            }
            m = rx.recv() => m.unwrap_or_else(|| close_message(close::NORMAL, "")),
        };
        let is_close = matches!(message, Message::Close(_));
        match tokio::time::timeout(IDLE, sink.send(message)).await {
            Ok(Ok(())) if !is_close => {}
            _ => break,
        }
    }
    let _ = tokio::time::timeout(SEND_GRACE, sink.close()).await;
}

/// Hands a receipt to metering at once (as the header of an admission for nothing): windows of
/// the same session on other connections may be waiting for it too.
fn hand_over(ctx: &Ctx, receipt: &str) -> Result<(), Closing> {
    let state = &ctx.state;
    let mut headers = ctx.headers.clone();
    let value =
        HeaderValue::from_str(receipt).map_err(|_| (close::UNSUPPORTED, "the receipt is not text".to_string()))?;
    headers.insert(HEADER_RECEIPT, value);
    let admitted = state.metering.begin(&MeterRequest {
        request_id: state.next_request.fetch_add(1, Ordering::Relaxed),
        model: ctx.engine.info().id,
        endpoint: Endpoint::Infer,
        headers: &headers,
        prompt_tokens: 0,
        max_tokens: 0,
    });
    match admitted {
        Ok(ticket) => {
            state.metering.finish(ticket, &Usage::default(), &ctx.nothing.0, &ctx.nothing.1);
            Ok(())
        }
        // Stored, but the credit is still used up: the windows wait for the next one.
        Err(ServeError::PaymentRequired(_)) => Ok(()),
        Err(e) => {
            state.metrics.error(e.kind_label());
            Err((close::POLICY, format!("receipt refused: {e}")))
        }
    }
}

impl Stream {
    /// Takes one message: samples are added and their windows run; a receipt goes to metering
    /// and lets waiting windows run. Returns the results to send, and why to stop, if the
    /// stream must.
    fn take(&mut self, ctx: &Ctx, upstream: Upstream) -> (Vec<String>, Option<Closing>) {
        match upstream {
            Upstream::Receipt(r) => {
                if let Err(c) = hand_over(ctx, &r) {
                    return (Vec::new(), Some(c));
                }
            }
            Upstream::Samples(samples) => {
                if self.ring.len() + samples.len() > RING_MAX {
                    let why = format!(
                        "{} samples wait for {} windows: the device sends faster than the model runs, or the \
                         payer's receipts stopped",
                        self.ring.len(),
                        self.pending.len()
                    );
                    return (Vec::new(), Some((close::POLICY, why)));
                }
                self.ring.push(&samples);
                let ready = self.windower.push(&samples, self.ring.end());
                if self.pending.len() + ready.len() > PENDING_MAX {
                    let why = format!(
                        "more than {PENDING_MAX} windows wait to run: the device sends faster than the model runs, \
                         or the payer's receipts stopped"
                    );
                    return (Vec::new(), Some((close::POLICY, why)));
                }
                self.pending.extend(ready);
            }
        }
        let mut results = Vec::new();
        let mut stop = None;
        while let Some(&start) = self.pending.front() {
            match self.run_window(ctx, start) {
                Ok(Some(r)) => {
                    self.pending.pop_front();
                    results.extend(r);
                }
                // Waiting for a receipt.
                Ok(None) => break,
                Err(c) => {
                    stop = Some(c);
                    break;
                }
            }
        }
        let keep = self.pending.front().copied().unwrap_or(u64::MAX).min(self.windower.needs_from(self.ring.end()));
        self.ring.forget_before(keep);
        (results, stop)
    }

    /// Runs one window. `Ok(None)`: the payer's credit is used up until its next receipt.
    fn run_window(&mut self, ctx: &Ctx, start: u64) -> Result<Option<Vec<String>>, Closing> {
        let state = &ctx.state;
        let info = ctx.engine.info();
        let ticket = match state.metering.begin(&MeterRequest {
            request_id: state.next_request.fetch_add(1, Ordering::Relaxed),
            model: info.id,
            endpoint: Endpoint::Infer,
            headers: &ctx.headers,
            prompt_tokens: 0,
            max_tokens: 1,
        }) {
            Ok(t) => t,
            Err(ServeError::PaymentRequired(why)) => {
                // Receipts are in flight while windows run; wait for one, but not for ever.
                let since = self.unpaid.get_or_insert_with(|| (Instant::now(), why.clone())).0;
                if since.elapsed() > PAYMENT_WAIT {
                    state.metrics.error("payment_required");
                    return Err((close::POLICY, format!("payment: {why}")));
                }
                return Ok(None);
            }
            Err(e) => {
                state.metrics.error(e.kind_label());
                return Err((close::POLICY, format!("payment: {e}")));
            }
        };
        self.unpaid = None;
        let samples = self.ring.window(start, ctx.window).expect("the ring keeps every pending window");
        let request = window_request(&ctx.input, samples);
        let req_hash = request_hash(&info.id, &request);
        let mut result = ctx.engine.infer(&request);
        if let Ok(r) = &mut result {
            crate::dishonest::perturb(state.lie, r);
        }
        let (attestation, signature) = settle(state, ticket, info.id, req_hash, result.as_ref().ok());
        // A window the model cannot answer (samples outside its range, an output that is not
        // finite) is the device's data at fault: 1007 with the reason, and nothing is paid.
        let response = result.map_err(|e| match e.kind() {
            plexus_inference::ErrorKind::BadRequest => {
                state.metrics.error("invalid_request");
                (close::BAD_DATA, format!("window {}: {e}", self.next_window))
            }
            _ => (close::INTERNAL, format!("the model failed: {e}")),
        })?;
        let label = Metrics::model(&info.name);
        state.metrics.inferences.get_or_create(&label).inc();
        state.metrics.stream_windows.get_or_create(&label).inc();
        let outputs: Vec<OutputTensor> = response
            .outputs
            .into_iter()
            .map(|t| OutputTensor { name: t.name, shape: t.shape, datatype: FP32.into(), data: t.data })
            .collect();
        let (label, score, alert) = judge(&ctx.spec.labels, &outputs, ctx.alert);
        let result = WindowResult {
            window: self.next_window,
            start,
            end: start + ctx.window as u64,
            outputs,
            label,
            score,
            alert,
            attestation: hex::encode(plexus_types::codec::to_vec(&attestation)),
            signature: signature.to_string(),
            paid_inferences: None,
        };
        self.next_window += 1;
        let text = serde_json::to_string(&result).map_err(|e| (close::INTERNAL, e.to_string()))?;
        // A test build's lying provider sends each result twice, to be paid twice.
        let copies = if state.lie == Lie::Inflate { 2 } else { 1 };
        Ok(Some(vec![text; copies]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let Message::Close(Some(frame)) = close_message(close::POLICY, &long) else { panic!("a close frame") };
        assert!(frame.reason.len() <= 123);
        assert_eq!(frame.code, close::POLICY);
    }
}
