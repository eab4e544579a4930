//! `GET /v2/models/{name}/stream`: a device's real-time stream, carried to a provider and paid
//! per window (see `plexus_serve::stream` for the protocol).
//!
//! The gateway keeps its own copy of the samples it forwarded, so it pays only for windows it
//! can check itself: each result must be the next window in order, lie where the stream's rule
//! allows (exactly every `hop` samples, or at least a refractory quarter second after the last
//! beat), be `window` samples the gateway forwarded, and carry the provider's signed attestation
//! of one inference whose request hash is the gateway's hash of those samples and whose output
//! hash is the outputs received. Then, and only then, the gateway signs a receipt for one more
//! inference and sends it up the same connection; the app gets the result with the label and
//! alert the gateway derived itself from those outputs, and the count paid so far.
//!
//! A result that does not check shuns the provider and ends the stream with close code 1011 (the
//! device reconnects and gets another provider); nothing is paid for it. So does the first
//! result after an audit of an earlier window (run in the background, so a window or two later)
//! found the provider's outputs wrong. A slow app is dropped
//! with 1008 `slow consumer`, as a provider would.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use plexus_inference::tensor::TensorRequest;
use plexus_serve::stream::{
    Hello, IDLE, MESSAGE_BYTES_MAX, OUTGOING_MAX, RING_MAX, Ring, SEND_GRACE, SLOW, STREAMS_MAX, StreamParams, Trigger,
    Upstream, WindowResult, close, decode_binary, decode_text, judge, window_request, write_results,
};
use plexus_types::{Address, Attestation, ModelId, Sig};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as UpCloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as UpMessage};
use tracing::{debug, info};

use crate::GatewayError;
use crate::billing::Lie;
use crate::directory::Candidate;
use crate::proxy::App;
use crate::session::Shared;

type Upstream_ = tokio_tungstenite::WebSocketStream<std::pin::Pin<Box<dyn crate::link::Io>>>;

/// Frames waiting to go up to the provider, at most.
const UP_QUEUE_MAX: usize = 64;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": message.into() }).to_string();
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What the gateway checks each window result against.
pub(crate) struct StreamCheck {
    model: ModelId,
    provider: Address,
    chain_id: String,
    input: String,
    window: usize,
    trigger: Trigger,
    /// The samples forwarded, as far back as a future window can reach.
    ring: Ring,
    next_window: u64,
    last_start: Option<u64>,
}

impl StreamCheck {
    pub(crate) fn new(model: ModelId, provider: Address, chain_id: &str, hello: &Hello, trigger: Trigger) -> Self {
        StreamCheck {
            model,
            provider,
            chain_id: chain_id.to_owned(),
            input: hello.input.clone(),
            window: hello.window,
            trigger,
            ring: Ring::default(),
            next_window: 0,
            last_start: None,
        }
    }

    /// Remembers samples forwarded to the provider.
    pub(crate) fn forwarded(&mut self, samples: &[f32]) {
        self.ring.push(samples);
        if self.ring.len() > RING_MAX {
            self.ring.forget_before(self.ring.end() - RING_MAX as u64);
        }
    }

    /// Checks one result; on success it is paid (one inference) and the next must follow it.
    /// Returns the attestation, its signature and the window's request (for an audit).
    pub(crate) fn check(&mut self, r: &WindowResult) -> Result<(Attestation, Sig, TensorRequest), Lie> {
        let wrong = |what: String| Lie::Attestation(what);
        if r.window != self.next_window {
            return Err(wrong(format!("window {} came when {} was next", r.window, self.next_window)));
        }
        if r.end.checked_sub(r.start) != Some(self.window as u64) {
            return Err(wrong(format!("window {}..{} is not {} samples", r.start, r.end, self.window)));
        }
        let gap = self.trigger.min_gap();
        match (self.trigger, self.last_start) {
            (Trigger::Hop(hop), last) => {
                let expected = last.map_or(0, |l| l + hop as u64);
                if r.start != expected {
                    return Err(wrong(format!("window starts at {}, the hop says {expected}", r.start)));
                }
            }
            (Trigger::RPeak { .. }, Some(last)) if r.start < last + gap => {
                return Err(wrong(format!("a beat at {} is within {gap} samples of the last one at {last}", r.start)));
            }
            _ => {}
        }
        let samples = self
            .ring
            .window(r.start, self.window)
            .ok_or_else(|| wrong(format!("window {}..{} is not among the samples sent", r.start, r.end)))?;
        let att = Attestation::from_hex(&r.attestation).map_err(Lie::Attestation)?;
        let sig: Sig = r.signature.parse().map_err(Lie::Attestation)?;
        if !att.verify(&self.provider, &sig, &self.chain_id) {
            return Err(wrong("not signed by the provider for this chain".into()));
        }
        if att.model != self.model {
            return Err(wrong(format!("the attestation is for model {}", att.model)));
        }
        let request = window_request(&self.input, samples);
        if att.request_hash != plexus_serve::kserve::request_hash(&self.model, &request) {
            return Err(wrong("the attestation is not for the samples of that window".into()));
        }
        if att.input_tokens != 0 || att.output_tokens != 1 {
            return Err(wrong(format!("the attestation counts {} inferences for one window", att.output_tokens)));
        }
        let outputs = r.tensors().map_err(Lie::Attestation)?;
        let response = plexus_inference::tensor::TensorResponse { outputs, rows: 1 };
        if att.output_hash != plexus_serve::kserve::output_hash(&response) {
            return Err(wrong("the outputs are not the ones attested".into()));
        }
        self.next_window += 1;
        self.last_start = Some(r.start);
        // Nothing before the next possible start is needed again.
        self.ring.forget_before(r.start + gap);
        Ok((att, sig, request))
    }
}

/// The provider's stream, connected and past its hello.
struct Connected {
    ws: Upstream_,
    hello: Hello,
    candidate: Candidate,
    session: Shared,
}

pub(crate) async fn stream(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    app.metrics.request("stream");
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("open this route as a WebSocket: {e}")),
    };
    let params = match StreamParams::parse(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("this gateway has {STREAMS_MAX} streams open"));
    };
    let (model, candidates) = match crate::kserve::tensor_model(&app, &name).await {
        Ok(found) => found,
        Err(e) => return error(e.status(), e.to_string()),
    };
    let connected = match connect(&app, model, &candidates, &params).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let trigger = match params.for_window(connected.hello.window) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    upgrade
        .max_message_size(MESSAGE_BYTES_MAX)
        .max_frame_size(MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| relay(app, socket, connected, model, trigger, params.alert, permit))
}

/// Opens the stream with the first provider that takes it.
async fn connect(
    app: &Arc<App>,
    model: ModelId,
    candidates: &[Candidate],
    params: &StreamParams,
) -> Result<Connected, Response> {
    let mut tried = Vec::new();
    let mut errors = Vec::new();
    while (tried.len() as u64) < u64::from(app.config.attempts_max) {
        let Some(c) = app.directory.pick(candidates, &tried) else { break };
        tried.push(c.provider.clone());
        let session = match app.sessions.for_candidate(&c).await {
            Ok(s) => s,
            Err(e @ GatewayError::Funds(_)) => return Err(error(e.status(), e.to_string())),
            Err(e) => {
                errors.push(format!("session with {}: {e}", c.provider));
                continue;
            }
        };
        for round in 0..2 {
            match connect_one(app, model, &c, &session, params).await {
                Ok((ws, hello)) => return Ok(Connected { ws, hello, candidate: c, session }),
                Err((Some(status), why)) if status == 401 && round == 0 => {
                    app.sessions.drop_token(&session);
                    if let Err(e) = app.sessions.ensure_token(&session).await {
                        errors.push(format!("re-authenticating with {}: {e}", c.provider));
                        break;
                    }
                    debug!(target: "gateway::stream", "authenticating again: {why}");
                }
                Err((Some(status), why)) if status == 402 && round == 0 => {
                    app.sessions.deliver(&session).await;
                    app.sessions.maybe_top_up(&session);
                    debug!(target: "gateway::stream", "payment first: {why}");
                }
                Err((Some(status), why)) if (400..500).contains(&status) && status != 429 && status != 402 => {
                    // The app's request is at fault (bad parameters): the next provider would agree.
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                    return Err(error(status, why));
                }
                Err((_, why)) => {
                    errors.push(why);
                    break;
                }
            }
        }
        app.metrics.failovers.inc();
    }
    let e = app.nobody_left(candidates, &tried, errors);
    let mut r = error(e.status(), format!("no provider took the stream: {e}"));
    e.mark_retry_after(&mut r);
    Err(r)
}

/// One attempt: the WebSocket to `c` and its hello. Errors carry the provider's HTTP status.
async fn connect_one(
    app: &Arc<App>,
    model: ModelId,
    c: &Candidate,
    s: &Shared,
    params: &StreamParams,
) -> Result<(Upstream_, Hello), (Option<u16>, String)> {
    let base = c.endpoint.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
    let url = format!("{base}/v2/models/{model}/stream?{}", params.query());
    let mut request = url.as_str().into_client_request().map_err(|e| (None, format!("{url}: {e}")))?;
    request.headers_mut().extend(app.request_headers(s, false));
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MESSAGE_BYTES_MAX))
        .max_frame_size(Some(MESSAGE_BYTES_MAX));
    let parsed = reqwest::Url::parse(&url).map_err(|e| (None, format!("{url}: {e}")))?;
    let io = crate::link::connect(&c.provider, &parsed, app.http.plain_allowed(), SEND_GRACE * 5)
        .await
        .map_err(|e| (None, format!("{}: {e}", c.provider)))?;
    let connecting = tokio_tungstenite::client_async_with_config(request, io, Some(config));
    let (mut ws, _) = match tokio::time::timeout(SEND_GRACE * 5, connecting).await {
        Err(_) => return Err((None, format!("{url}: no answer"))),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.to_string());
            return Err((Some(status), format!("{}: {message}", c.provider)));
        }
        Ok(Err(e)) => return Err((None, format!("{url}: {e}"))),
        Ok(Ok(connected)) => connected,
    };
    let first = tokio::time::timeout(SEND_GRACE * 5, ws.next()).await;
    let hello = match first {
        Ok(Some(Ok(UpMessage::Text(t)))) => serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .and_then(|v| serde_json::from_value::<Hello>(v["stream"].clone()).ok()),
        _ => None,
    };
    let hello = hello.ok_or_else(|| (None, format!("{}: no stream hello", c.provider)))?;
    if hello.model_id != model.to_string() {
        return Err((None, format!("{}: the stream is of model {}, not {model}", c.provider, hello.model_id)));
    }
    Ok((ws, hello))
}

fn up_close(code: u16, reason: &str) -> UpMessage {
    let mut reason = reason.to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    UpMessage::Close(Some(UpCloseFrame { code: code.into(), reason: reason.into() }))
}

/// Carries one stream until either side ends it.
async fn relay(
    app: Arc<App>,
    socket: WebSocket,
    connected: Connected,
    model: ModelId,
    trigger: Trigger,
    alert: f32,
    _permit: OwnedSemaphorePermit,
) {
    let Connected { ws, mut hello, candidate: c, session: s } = connected;
    app.metrics.streams_open.inc();
    let mut check = StreamCheck::new(model, c.provider.clone(), app.sessions.chain_id(), &hello, trigger);
    let session_id = s.lock().expect("session lock").id;
    info!(target: "gateway::stream", provider = %c.provider, model = %c.model_name, session = %session_id, "stream opened");
    hello.session = Some(session_id.to_string());
    let labels = hello.labels.clone();

    let (app_sink, mut app_source) = socket.split();
    let (to_app, app_rx) = mpsc::channel::<Message>(OUTGOING_MAX);
    let (app_closing, app_closing_rx) = watch::channel::<Option<(u16, String)>>(None);
    let app_writer = tokio::spawn(write_results(app_sink, app_rx, app_closing_rx));

    let (mut up_sink, mut up_source) = ws.split();
    let (to_up, mut up_rx) = mpsc::channel::<UpMessage>(UP_QUEUE_MAX);
    let up_writer = tokio::spawn(async move {
        while let Some(m) = up_rx.recv().await {
            let is_close = matches!(m, UpMessage::Close(_));
            match tokio::time::timeout(IDLE, up_sink.send(m)).await {
                Ok(Ok(())) if !is_close => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(SEND_GRACE, up_sink.close()).await;
    });

    let mut end: Option<(u16, String)> = None;
    let mut up_end: (u16, String) = (close::NORMAL, String::new());
    if to_app.send(Message::Text(json!({ "stream": hello }).to_string().into())).await.is_err() {
        end = Some((close::GOING_AWAY, String::new()));
    }
    let mut paid = 0u64;
    while end.is_none() {
        tokio::select! {
            frame = tokio::time::timeout(IDLE, app_source.next()) => {
                let upstream = match frame {
                    Err(_) => {
                        end = Some((close::GOING_AWAY, format!("idle: no samples for {} s", IDLE.as_secs())));
                        continue;
                    }
                    Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                        end = Some((close::NORMAL, String::new()));
                        continue;
                    }
                    Ok(Some(Ok(Message::Binary(b)))) => decode_binary(&b).map(Upstream::Samples),
                    Ok(Some(Ok(Message::Text(t)))) => decode_text(&t),
                    Ok(Some(Ok(_))) => continue,
                };
                let samples = match upstream {
                    Ok(Upstream::Samples(samples)) => samples,
                    Ok(Upstream::Receipt(_)) => {
                        end = Some((close::UNSUPPORTED, "the gateway pays this stream: send samples only".into()));
                        up_end = (close::NORMAL, String::new());
                        continue;
                    }
                    Err(c) => {
                        end = Some(c);
                        continue;
                    }
                };
                check.forwarded(&samples);
                let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
                if to_up.send_timeout(UpMessage::Binary(bytes.into()), SEND_GRACE).await.is_err() {
                    end = Some((close::GOING_AWAY, format!("provider {} stopped taking samples", c.provider)));
                    up_end = (close::POLICY, format!("{SLOW}: samples waited too long"));
                }
            }
            frame = up_source.next() => {
                let text = match frame {
                    Some(Ok(UpMessage::Text(t))) => t,
                    Some(Ok(UpMessage::Close(frame))) => {
                        let (code, why) = frame.map_or((close::GOING_AWAY, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        end = Some((code, format!("provider: {why}")));
                        continue;
                    }
                    Some(Ok(UpMessage::Ping(_) | UpMessage::Pong(_))) => continue,
                    Some(Ok(_)) => {
                        end = Some((close::INTERNAL, "the provider sent a frame that is not a result".into()));
                        continue;
                    }
                    None | Some(Err(_)) => {
                        end = Some((close::GOING_AWAY, format!("provider {} went away", c.provider)));
                        continue;
                    }
                };
                if let Some(output) = serde_json::from_str(&text).ok().as_ref().and_then(crate::proxy::not_finite_output) {
                    // Not a lie anyone can prove (an older provider sends NaN as null): not paid,
                    // and the device reconnects for another provider.
                    app.directory.failed(&c.provider, &c.model);
                    end = Some((close::INTERNAL, format!("the provider sent output `{output}` that is not a finite number; window not paid")));
                    up_end = (close::POLICY, "not paid: an output that is not a finite number".into());
                    continue;
                }
                let checked = serde_json::from_str::<WindowResult>(&text)
                    .map_err(|e| Lie::Attestation(format!("a result that does not parse: {e}")))
                    .and_then(|r| check.check(&r).map(|v| (r, v)));
                let (mut result, (att, sig, request)) = match checked {
                    Ok(v) => v,
                    Err(lie) => {
                        app.caught(&c, &lie);
                        end = Some((close::INTERNAL, format!("provider caught lying, window not paid: {lie}")));
                        up_end = (close::POLICY, format!("not paid: {lie}"));
                        continue;
                    }
                };
                if app.directory.shunned(&c.provider, &c.model) {
                    end = Some((close::INTERNAL, format!(
                        "provider {} failed an audit or was caught lying elsewhere; window not paid, reconnect for another",
                        c.provider
                    )));
                    up_end = (close::POLICY, "not paid: shunned after a failed audit".into());
                    continue;
                }
                let receipt = app.sessions.acknowledge(&s, 0, 1, Some(att.hash()));
                app.offer_tensor_audit(&c, &s, att, sig, || Some((request, result.tensors().ok()?)));
                app.metrics.receipts_signed.inc();
                app.metrics.tokens(0, 1);
                app.metrics.stream_windows.inc();
                app.sessions.maybe_top_up(&s);
                paid += 1;
                if let Some(r) = receipt {
                    let up = UpMessage::Text(json!({ "receipt": r }).to_string().into());
                    if to_up.send_timeout(up, SEND_GRACE).await.is_err() {
                        end = Some((close::GOING_AWAY, format!("provider {} stopped taking receipts", c.provider)));
                        continue;
                    }
                }
                // What the app sees is the gateway's reading of the attested outputs.
                let (label, score, alert) = judge(&labels, &result.outputs, alert);
                (result.label, result.score, result.alert) = (label, score, alert);
                result.paid_inferences = Some(paid);
                let text = serde_json::to_string(&result).unwrap_or_default();
                if to_app.send_timeout(Message::Text(text.into()), SEND_GRACE).await.is_err() {
                    end = Some((close::POLICY, format!("{SLOW}: results waited more than {} s", SEND_GRACE.as_secs())));
                    up_end = (close::NORMAL, String::new());
                }
            }
        }
    }
    let end = end.unwrap_or((close::NORMAL, String::new()));
    info!(target: "gateway::stream", provider = %c.provider, session = %session_id, paid, code = end.0, reason = %end.1, "stream closed");
    let _ = to_up.try_send(up_close(up_end.0, &up_end.1));
    drop(to_up);
    if end.0 != close::NORMAL {
        let _ = app_closing.send(Some(end));
    }
    drop(to_app);
    // The closing handshakes: what either side still sends is read and dropped until it closes
    // too, so the app gets the close frame and its reason, not a reset.
    let app_drain = async {
        while let Ok(Some(Ok(m))) = tokio::time::timeout(IDLE, app_source.next()).await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let up_drain = async {
        while let Ok(Some(Ok(m))) = tokio::time::timeout(SEND_GRACE, up_source.next()).await {
            if matches!(m, UpMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::join!(app_writer, up_writer, app_drain, up_drain);
    app.sessions.deliver(&s).await;
    app.metrics.streams_open.dec();
}
