//! `plexus stream`: a device's side of a real-time stream through a gateway — samples up at
//! their real rate, one result per window down, alerts printed as they come.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{SinkExt, StreamExt};
use plexus_inference::models::ModelCache;
use plexus_serve::stream::{Hello, SAMPLES_PER_FRAME_MAX, WindowResult};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(clap::Args)]
#[command(long_about = "Stream samples to a tensor model through a gateway and print its alerts.\n\n\
Opens a WebSocket to the gateway's /v2/models/<MODEL>/stream, sends the samples at their sample \
rate (or faster with --speed), and prints each alert as the provider's result for its window \
arrives (every window with --all). Each window is one inference, checked by the gateway against \
the samples it forwarded and paid with a signed receipt; the last line says how many were paid.\n\n\
Windows fall every --hop samples, or one per heartbeat with --beats (the provider finds R peaks \
in the samples; the window starts --before samples ahead of each).\n\n\
Examples:\n  \
plexus stream ecg-heartbeat --recording --beats --speed 10\n  \
plexus stream traffic-anomaly --input volumes.txt --hop 24 --rate 1 --speed 0")]
pub struct StreamArgs {
    /// The model to stream to (a name or id the gateway knows).
    model: String,
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    gateway: String,
    /// The gateway's API key, if it has one.
    #[arg(long, env = "PLEXUS_GATEWAY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Samples to send: numbers separated by spaces, commas or newlines (`-` for stdin).
    #[arg(long, value_name = "FILE", conflicts_with = "recording")]
    input: Option<PathBuf>,
    /// Send the model's own recording from the local model cache (ecg-heartbeat: 65 s of
    /// MIT-BIH record 208 around its held-out minute), and compare the alerts with its labels.
    #[arg(long)]
    recording: bool,
    /// Samples per second of the input (default: the recording's, else 360).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: Option<u32>,
    /// How much faster than real time to send (0: as fast as the stream takes them).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// One window per heartbeat (R peak) instead of every --hop samples.
    #[arg(long, conflicts_with = "hop")]
    beats: bool,
    /// Samples before the R peak a beat's window starts at.
    #[arg(long, default_value_t = 90, requires = "beats")]
    before: u32,
    /// Samples between windows (default: the window's length).
    #[arg(long)]
    hop: Option<u32>,
    /// Probability at which an abnormal class is an alert.
    #[arg(long, default_value_t = 0.5)]
    alert: f32,
    /// Print every window, not only alerts.
    #[arg(long)]
    all: bool,
    /// Print each result as the JSON the gateway sent.
    #[arg(long)]
    json: bool,
}

/// A recording shipped with a model (`stream.json`).
#[derive(Deserialize)]
struct Recording {
    sample_rate_hz: u32,
    samples: Vec<f32>,
    #[serde(default)]
    beats: Option<Beats>,
}

#[derive(Deserialize)]
struct Beats {
    r_peak: Vec<u64>,
    labels: Vec<u8>,
}

fn read_samples(path: &PathBuf) -> anyhow::Result<Vec<f32>> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(i, t)| {
            let v: f32 = t.parse().with_context(|| format!("value {} ({t:?}) is not a number", i + 1))?;
            if !v.is_finite() {
                bail!("value {} ({t}) is not finite", i + 1);
            }
            Ok(v)
        })
        .collect()
}

pub fn run(args: StreamArgs) -> anyhow::Result<()> {
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        bail!("--speed must be 0 or more");
    }
    let (samples, recorded_rate, beats) = if args.recording {
        let path = ModelCache::from_env().root().join(&args.model).join("stream.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} has no recording here ({}); pull it first: plexus model pull {}",
                args.model,
                path.display(),
                args.model
            )
        })?;
        let r: Recording = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        (r.samples, Some(r.sample_rate_hz), r.beats)
    } else if let Some(path) = &args.input {
        (read_samples(path)?, None, None)
    } else {
        bail!("say what to send: --input FILE (or - for stdin), or --recording");
    };
    if samples.is_empty() {
        bail!("no samples to send");
    }
    let rate = args.rate.or(recorded_rate).unwrap_or(360);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(stream(args, samples, rate, beats))
}

async fn stream(args: StreamArgs, samples: Vec<f32>, rate: u32, beats: Option<Beats>) -> anyhow::Result<()> {
    let mut query = format!("alert={}", args.alert);
    if args.beats {
        query.push_str(&format!("&trigger=r-peak&rate={rate}&before={}", args.before));
    } else if let Some(h) = args.hop {
        query.push_str(&format!("&hop={h}"));
    }
    let base = args.gateway.trim_end_matches('/').replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
    let url = format!("{base}/v2/models/{}/stream?{query}", args.model);
    let mut request = url.as_str().into_client_request().with_context(|| format!("bad gateway URL {url}"))?;
    if let Some(key) = &args.api_key {
        request.headers_mut().insert("authorization", format!("Bearer {key}").parse()?);
    }
    let (ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(c) => c,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().or(v["error"]["message"].as_str()).map(str::to_owned))
                .unwrap_or(body);
            bail!("the gateway refused the stream ({}): {message}", r.status());
        }
        Err(e) => bail!("cannot reach the gateway at {url}: {e}"),
    };
    let (mut sink, mut source) = ws.split();
    let hello: Hello = match source.next().await {
        Some(Ok(Message::Text(t))) => {
            let v: serde_json::Value = serde_json::from_str(&t).context("the gateway's first message")?;
            serde_json::from_value(v["stream"].clone()).context("the gateway's first message")?
        }
        other => bail!("the stream ended before it started: {other:?}"),
    };
    eprintln!(
        "streaming {} samples at {rate} Hz{} to {} (window {} samples, {}{}), provider {}, session {}",
        samples.len(),
        if args.speed == 0.0 {
            ", as fast as they are taken".to_string()
        } else {
            format!(", {}x real time", args.speed)
        },
        hello.model,
        hello.window,
        hello.trigger,
        hello.hop.map(|h| format!(" every {h}")).unwrap_or_default(),
        hello.provider,
        hello.session.as_deref().unwrap_or("-"),
    );

    // Frames of a tenth of a second (at least one sample), paced at the chosen speed.
    let frame = ((rate / 10).max(1) as usize).min(SAMPLES_PER_FRAME_MAX);
    let total = samples.len();
    let speed = args.speed;
    let sender = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        for (i, chunk) in samples.chunks(frame).enumerate() {
            if speed > 0.0 {
                let due = Duration::from_secs_f64((i * frame) as f64 / f64::from(rate) / speed);
                tokio::time::sleep_until(started + due).await;
            }
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                return sink;
            }
        }
        sink
    });

    let mut windows = 0u64;
    let mut alerts = Vec::new();
    let mut paid = 0u64;
    let mut closed = None;
    let mut sender = sender;
    let mut sending = true;
    let mut sink = None;
    loop {
        // Once everything is sent, results still on their way get a few seconds.
        let wait = if sink.is_some() { Duration::from_secs(3) } else { Duration::from_secs(120) };
        let next = tokio::select! {
            m = tokio::time::timeout(wait, source.next()) => m,
            done = &mut sender, if sending => {
                sending = false;
                sink = done.ok();
                continue;
            }
        };
        let message = match next {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(e))) => bail!("the stream failed: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match message {
            Message::Text(t) => {
                let r: WindowResult = serde_json::from_str(&t).with_context(|| format!("a result: {t}"))?;
                windows += 1;
                paid = r.paid_inferences.unwrap_or(paid);
                if args.json {
                    println!("{t}");
                } else if r.alert || args.all {
                    let at = r.end as f64 / f64::from(rate);
                    let label = r.label.as_deref().unwrap_or("-");
                    let score = r.score.map(|s| format!(" p={s:.3}")).unwrap_or_default();
                    let mark = if r.alert { "ALERT " } else { "      " };
                    println!("{at:8.2} s  window {:5}  samples {}..{}  {mark}{label}{score}", r.window, r.start, r.end);
                }
                if r.alert {
                    alerts.push(r.start + u64::from(args.before));
                }
            }
            Message::Close(frame) => {
                closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            _ => {}
        }
    }
    if let Some(mut sink) = sink {
        let _ = sink.send(Message::Close(None)).await;
    }
    eprintln!("{windows} windows, {} alerts; the gateway paid {paid} inferences for {total} samples", alerts.len());
    if let (Some(b), true) = (beats, args.beats) {
        // How the alerts match the recording's labelled beats (an alert within 10 samples of a
        // labelled R peak counts for that beat).
        let near = |r: u64| alerts.iter().any(|&a| a.abs_diff(r) <= 10);
        let (mut tp, mut fn_, mut fp) = (0, 0, 0);
        for (&r, &label) in b.r_peak.iter().zip(&b.labels) {
            match (label == 1, near(r)) {
                (true, true) => tp += 1,
                (true, false) => fn_ += 1,
                (false, true) => fp += 1,
                _ => {}
            }
        }
        let abnormal = b.labels.iter().filter(|&&l| l == 1).count();
        eprintln!(
            "against the recording's {} labelled beats ({abnormal} abnormal): {tp} abnormal beats alerted, {fn_} missed, \
             {fp} normal beats alerted",
            b.labels.len()
        );
    }
    match closed {
        Some((code, reason)) if code != 1000 => bail!("the stream was closed ({code}): {reason}"),
        _ => Ok(()),
    }
}
