//! Probes: the gateway measures the providers it is not using right now, so routing knows their
//! latency and availability before an app's request depends on them.
//!
//! A probe is an ordinary chat request of this gateway: the same session, receipts and API as
//! an app's, an everyday prompt, random length and temperature, maybe audited like any other.
//! A provider cannot tell it from client traffic, so it cannot answer probes well and clients
//! badly. Latency feeds the same moving average routing scores by; a failed probe cools the
//! provider down like a failed request. What a provider says of itself never counts.
//!
//! Only text models apps asked for in the last ten intervals are probed (an unused gateway stops
//! spending), only providers nothing was sent to for the probe interval, a few per round:
//! probes cost little next to the traffic they serve.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt as _;
use serde_json::{Value, json};
use tracing::debug;

use crate::proxy::App;

/// Text models whose providers are probed, at most (the most recently asked for).
pub const MODELS_PROBED_MAX: usize = 8;
/// Probes sent per round, at most.
const PROBES_PER_ROUND: usize = 4;
/// Probing stops once apps have asked for nothing for this many intervals.
const PROBE_IDLE_INTERVALS: u32 = 10;
/// The default interval: a provider idle this long is probed.
pub const PROBE_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

/// Everyday requests, so a probe looks like any app's.
const PROMPTS: &[&str] = &[
    "What is a good name for a cat?",
    "Give me a tip for sleeping better.",
    "How do I boil an egg?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What should I pack for a weekend hike?",
    "Write a haiku about the sea.",
    "Explain what a CPU does.",
    "Suggest a healthy breakfast.",
    "What is the capital of Canada?",
    "Translate 'good morning' into Spanish and French.",
    "List three uses for baking soda.",
    "Why do leaves change color in autumn?",
];

/// A chat request like an app's, for `model`.
fn probe_body(model: &str) -> Value {
    let mut rng = rand::rng();
    let prompt = PROMPTS[rng.random_range(0..PROMPTS.len())];
    let temperature = [0.0, 0.7, 1.0][rng.random_range(0..3)];
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": rng.random_range(16..=64u32),
        "temperature": temperature,
    })
}

/// Probes idle providers every half interval, for as long as the gateway runs.
pub(crate) async fn work(app: Arc<App>) {
    let interval = app.config.probe_interval;
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval((interval / 2).max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        round(&app, interval).await;
    }
}

async fn round(app: &Arc<App>, interval: Duration) {
    // A gateway nobody uses stops probing: only models asked for within the last stretch.
    let recent = interval.saturating_mul(PROBE_IDLE_INTERVALS);
    let models: Vec<String> = app
        .asked
        .lock()
        .expect("asked lock")
        .iter()
        .filter(|(_, at)| at.elapsed() < recent)
        .map(|(n, _)| n.clone())
        .collect();
    let mut sent = 0;
    for name in models.iter().rev() {
        let Ok(id) = app.directory.resolve(name, &app.config.constraints).map(|(id, _)| id) else { continue };
        let idle: Vec<_> = app
            .directory
            .candidates(&id, &app.config.constraints)
            .into_iter()
            .filter(|c| app.directory.due_probe(&c.provider, &c.model, interval))
            .collect();
        for c in idle {
            if sent >= PROBES_PER_ROUND {
                return;
            }
            sent += 1;
            let ok = app.probe(&c, name, probe_body(name)).await;
            debug!(target: "gateway::probe", provider = %c.provider, model = %name, ok, "probed");
            app.directory.probed(&c.provider, ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_look_like_app_requests_and_are_bounded() {
        for _ in 0..64 {
            let b = probe_body("m");
            assert_eq!(b["model"], "m");
            let n = b["max_tokens"].as_u64().unwrap();
            assert!((16..=64).contains(&n), "{b}");
            assert!(PROMPTS.contains(&b["messages"][0]["content"].as_str().unwrap()));
            assert!(b.get("plexus").is_none() && b.get("user").is_none(), "nothing marks a probe: {b}");
        }
    }
}
