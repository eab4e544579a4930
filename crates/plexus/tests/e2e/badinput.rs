//! A client's bad input is the client's problem, as a user meets it on a devnet: every kind of
//! model (text, embeddings, each edge tensor model, an ECG stream) is sent inputs it cannot
//! answer, through `plexus gateway`. Each gets a 4xx (or a 1007 close) that says what to change;
//! nothing is billed (the gateway's receipts stay as they were, to the token); no provider's
//! standing moves (no lie, no strike, no cool-down); and the next good request to every model is
//! served. Then 100 bad requests interleaved with 1,000 good ones from 8 concurrent clients:
//! not one good request fails.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::stream::{binary, drain, open, paid_total};
use crate::util::*;

const CHAT: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

/// What a gateway has billed (per session: input and output counted, amount) and every provider
/// standing it keeps: a bad request must change neither.
#[derive(Debug, PartialEq)]
struct Books {
    billed: Vec<(String, u64, u64, String)>,
    standing: Value,
}

fn books(gw: &Gw) -> Books {
    let status = gw.status();
    let mut billed: Vec<(String, u64, u64, String)> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        // A session opened for a request that was then refused holds nothing: not a bill.
        .filter(|s| s["cum_amount"] != "0" || s["cum_input_tokens"] != 0 || s["cum_output_tokens"] != 0)
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["cum_input_tokens"].as_u64().unwrap(),
                s["cum_output_tokens"].as_u64().unwrap(),
                s["cum_amount"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    billed.sort();
    Books { billed, standing: status["standing"].clone() }
}

/// Posts raw bytes with a JSON content type; the status and the body.
fn post_raw(gw: &Gw, path: &str, body: Vec<u8>) -> (u16, String) {
    if body.len() > 4 << 20 {
        return post_declared(gw, path, body.len());
    }
    let r = http()
        .post(format!("{}{path}", gw.base))
        .bearer_auth(&gw.key)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(180))
        .body(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// Declares a body of `length` bytes and sends none: the gateway must refuse it from the
/// declared length alone. (Sending it all races the refusal: the gateway answers and closes
/// before the client has written it, and the client sees a broken pipe instead of the answer.)
fn post_declared(gw: &Gw, path: &str, length: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let address = gw.base.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\nconnection: close\r\n\r\n",
        gw.key
    );
    tcp.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let read = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    assert!(read.is_ok(), "the refusal comes without waiting for the body: {read:?}");
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // The body may come chunked: keep the JSON object in it.
    let json = body.find('{').and_then(|i| body.rfind('}').map(|j| body[i..=j].to_string())).unwrap_or_default();
    (code, json)
}

/// The message of an OpenAI error (`error.message`) or a KServe one (`error`).
fn message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    v["error"]["message"].as_str().or_else(|| v["error"].as_str()).map(str::to_owned)
}

fn infer(input: &str, rows: &[Vec<f32>]) -> Value {
    json!({ "inputs": [{ "name": input, "shape": [rows.len(), rows[0].len()], "datatype": "FP32", "data": rows }] })
}

/// The edge models: name, input, row width.
const TENSORS: [(&str, &str, usize); 3] = [
    ("ecg-heartbeat", "ecg_window", 256),
    ("demand-forecast", "demand_history", 336),
    ("traffic-anomaly", "traffic_window", 192),
];

/// A good request of each kind, by index (cycled by the load phase): (path, body).
fn good(i: usize) -> (String, Value) {
    let (name, input, width) = TENSORS[i % 3];
    match i % 5 {
        0..=2 => {
            // Realistic magnitudes for each model: mV, MW, vehicles/hour.
            let level = [0.0f32, 30_000.0, 3_000.0][i % 3];
            let row: Vec<f32> =
                (0..width).map(|j| level + (1.0 + level / 10.0) * ((j + i) as f32 * 0.1).sin()).collect();
            (format!("/v2/models/{name}/infer"), infer(input, &[row]))
        }
        3 => ("/v1/embeddings".into(), json!({ "model": EMBED, "input": format!("good request {i}") })),
        _ => (
            "/v1/chat/completions".into(),
            json!({ "model": CHAT, "max_tokens": 2, "temperature": 0,
                    "messages": [{ "role": "user", "content": format!("Say {i}.") }] }),
        ),
    }
}

/// A chat whose one message is `n` words "a" (one token each).
fn words(n: u64) -> String {
    "a ".repeat(n as usize).trim_end().to_string()
}

/// Bad requests: (what, path, raw body). Each must be refused with a 4xx. `at` is the number
/// of words that makes a chat prompt exactly as long as the context.
fn bad_requests(context: u64, at: u64) -> Vec<(String, String, Vec<u8>)> {
    let v = |value: Value| serde_json::to_vec(&value).unwrap();
    let chat = |extra: Value| {
        let mut body = json!({ "model": CHAT, "messages": [{ "role": "user", "content": "Hi" }] });
        for (k, x) in extra.as_object().unwrap() {
            body[k] = x.clone();
        }
        v(body)
    };
    // A word is at least one token: this many cannot fit.
    let past = "word ".repeat(context as usize * 2);
    let mut list: Vec<(String, String, Vec<u8>)> = vec![
        ("chat: empty body".into(), "/v1/chat/completions".into(), Vec::new()),
        ("chat: not JSON".into(), "/v1/chat/completions".into(), b"{\"model\":".to_vec()),
        ("chat: a JSON array".into(), "/v1/chat/completions".into(), b"[]".to_vec()),
        (
            "chat: invalid UTF-8".into(),
            "/v1/chat/completions".into(),
            [
                &b"{\"model\":\"smollm2-135m-instruct\",\"messages\":[{\"role\":\"user\",\"content\":\""[..],
                b"\xff\xfe\x80",
                b"\"}]}",
            ]
            .concat(),
        ),
        ("chat: no model".into(), "/v1/chat/completions".into(), v(json!({ "messages": [] }))),
        ("chat: unknown model".into(), "/v1/chat/completions".into(), chat(json!({ "model": "no-such-model" }))),
        ("chat: no messages".into(), "/v1/chat/completions".into(), chat(json!({ "messages": [] }))),
        ("chat: messages not a list".into(), "/v1/chat/completions".into(), chat(json!({ "messages": "Hi" }))),
        (
            "chat: unknown role".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "messages": [{ "role": "wizard", "content": "Hi" }] })),
        ),
        ("chat: unknown field".into(), "/v1/chat/completions".into(), chat(json!({ "bogus": true }))),
        (
            "chat: a penalty out of range".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "frequency_penalty": 2.5 })),
        ),
        (
            "chat: a logit bias on a token outside the vocabulary".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "logit_bias": { "4000000": 5 } })),
        ),
        (
            "chat: a logit bias keyed by text".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "logit_bias": { "hello": -100 } })),
        ),
        ("chat: max_tokens 0".into(), "/v1/chat/completions".into(), chat(json!({ "max_tokens": 0 }))),
        (
            "chat: max_tokens huge".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "max_tokens": 4_000_000_000u64 })),
        ),
        ("chat: max_tokens negative".into(), "/v1/chat/completions".into(), chat(json!({ "max_tokens": -1 }))),
        ("chat: temperature out of range".into(), "/v1/chat/completions".into(), chat(json!({ "temperature": 1e9 }))),
        (
            "chat: a JSON schema that does not compile".into(),
            "/v1/chat/completions".into(),
            chat(
                json!({ "response_format": { "type": "json_schema", "json_schema": { "name": "x", "schema": { "type": "nope" } } } }),
            ),
        ),
        (
            "chat: a grammar longer than 4 KiB".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "grammar": format!("start: \"{}\"", "a".repeat(5000)) })),
        ),
        ("chat: a GBNF grammar".into(), "/v1/chat/completions".into(), chat(json!({ "grammar": "root ::= \"a\"" }))),
        (
            "chat: an unknown response format".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "response_format": { "type": "xml" } })),
        ),
        ("chat: n = 9".into(), "/v1/chat/completions".into(), chat(json!({ "n": 9 }))),
        ("chat: n = 0".into(), "/v1/chat/completions".into(), chat(json!({ "n": 0 }))),
        ("chat: n = 2, streamed".into(), "/v1/chat/completions".into(), chat(json!({ "n": 2, "stream": true }))),
        (
            "chat: prompt past the context".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "messages": [{ "role": "user", "content": past }] })),
        ),
        (
            "chat, streamed: prompt past the context".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "stream": true, "messages": [{ "role": "user", "content": past }] })),
        ),
        (
            "chat: a prompt exactly as long as the context".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "messages": [{ "role": "user", "content": words(at) }] })),
        ),
        (
            "chat: a prompt 8 tokens short of the context, 64 more asked".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "max_tokens": 64, "messages": [{ "role": "user", "content": words(at - 8) }] })),
        ),
        (
            "chat, streamed: max_tokens 0".into(),
            "/v1/chat/completions".into(),
            chat(json!({ "stream": true, "max_tokens": 0 })),
        ),
        ("completions: empty prompt".into(), "/v1/completions".into(), v(json!({ "model": CHAT, "prompt": "" }))),
        (
            "completions: prompt past the context".into(),
            "/v1/completions".into(),
            v(json!({ "model": CHAT, "prompt": past })),
        ),
        ("completions: token ids".into(), "/v1/completions".into(), v(json!({ "model": CHAT, "prompt": [[1, 2, 3]] }))),
        ("embeddings: empty input".into(), "/v1/embeddings".into(), v(json!({ "model": EMBED, "input": "" }))),
        ("embeddings: an empty list".into(), "/v1/embeddings".into(), v(json!({ "model": EMBED, "input": [] }))),
        (
            "embeddings: input past the context".into(),
            "/v1/embeddings".into(),
            v(json!({ "model": EMBED, "input": past })),
        ),
        (
            "embeddings: input past the 256 tokens the model reads".into(),
            "/v1/embeddings".into(),
            v(json!({ "model": EMBED, "input": "word ".repeat(600) })),
        ),
        ("embeddings: numbers for text".into(), "/v1/embeddings".into(), v(json!({ "model": EMBED, "input": 42 }))),
        (
            "embeddings: unknown field".into(),
            "/v1/embeddings".into(),
            v(json!({ "model": EMBED, "input": "x", "max_tokens": 3 })),
        ),
        ("embeddings: a text model".into(), "/v1/embeddings".into(), v(json!({ "model": CHAT, "input": "x" }))),
        ("oversized body (5 MiB)".into(), "/v1/chat/completions".into(), vec![b' '; 5 << 20]),
    ];
    for (name, input, width) in TENSORS {
        let path = format!("/v2/models/{name}/infer");
        let row = |x: f32| vec![x; width];
        let mut add = |what: &str, body: Vec<u8>| list.push((format!("{name}: {what}"), path.clone(), body));
        add("null (NaN) in the data", {
            let mut r: Vec<Value> = row(1.0).into_iter().map(Value::from).collect();
            r[3] = Value::Null;
            v(json!({ "inputs": [{ "name": input, "shape": [1, width], "datatype": "FP32", "data": [r] }] }))
        });
        add("infinity (1e39)", {
            let mut s = v(infer(input, &[row(1.0)]));
            let text = String::from_utf8(s.clone()).unwrap().replacen("1.0", "1e39", 1);
            s = text.into_bytes();
            s
        });
        add("a huge magnitude (3e38)", v(infer(input, &[row(3e38)])));
        add("a huge negative magnitude (-3e38)", v(infer(input, &[row(-3e38)])));
        add("outside the model's range (1e7)", v(infer(input, &[row(1e7)])));
        add(
            "strings for numbers",
            v(json!({ "inputs": [{ "name": input, "shape": [1, 2], "datatype": "FP32", "data": ["1", "2"] }] })),
        );
        add("a short row", v(infer(input, &[vec![1.0; width - 1]])));
        add(
            "a rank-3 shape",
            v(json!({ "inputs": [{ "name": input, "shape": [1, 1, width], "datatype": "FP32", "data": row(1.0) }] })),
        );
        add("another input name", v(infer("not_the_input", &[row(1.0)])));
        add(
            "INT8 data outside INT8",
            v(
                json!({ "inputs": [{ "name": input, "shape": [1, width], "datatype": "INT8", "data": vec![300; width] }] }),
            ),
        );
        add(
            "BOOL data",
            v(
                json!({ "inputs": [{ "name": input, "shape": [1, width], "datatype": "BOOL", "data": vec![true; width] }] }),
            ),
        );
        add(
            "no rows",
            v(json!({ "inputs": [{ "name": input, "shape": [0, width], "datatype": "FP32", "data": [] }] })),
        );
        add("65 rows (64 at most)", v(infer(input, &vec![row(1.0); 65])));
        add("an unknown field", {
            let mut b = infer(input, &[row(1.0)]);
            b["bogus"] = json!(1);
            v(b)
        });
        add("an empty body", Vec::new());
        add("not JSON", b"inputs".to_vec());
    }
    list.push(("demand-forecast: negative demand".into(), "/v2/models/demand-forecast/infer".into(), {
        let mut r = vec![30_000.0f32; 336];
        r[100] = -5.0;
        serde_json::to_vec(&infer("demand_history", &[r])).unwrap()
    }));
    list.push((
        "a text model on the tensor route".into(),
        format!("/v2/models/{CHAT}/infer"),
        serde_json::to_vec(&infer("x", &[vec![1.0; 4]])).unwrap(),
    ));
    list
}

/// The web page the test's gateway lets in (`--allow-origin`).
const APP_ORIGIN: &str = "http://app.example:5173";

/// Request ids on every response (the app's own kept), CORS for the allowed origin only, and
/// models looked up one at a time, as OpenAI's API answers them.
fn what_clients_and_browsers_expect(gw: &Gw) {
    let id = |r: &reqwest::blocking::Response| r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    let chat = json!({ "model": CHAT, "max_tokens": 2, "messages": [{ "role": "user", "content": "Hi" }] });
    let url = format!("{}/v1/chat/completions", gw.base);
    let ok = http().post(&url).bearer_auth(&gw.key).json(&chat).send().unwrap();
    let bad = http().post(&url).bearer_auth(&gw.key).json(&json!({ "model": CHAT })).send().unwrap();
    let no_key = http().post(&url).json(&chat).send().unwrap();
    assert_eq!((ok.status().as_u16(), bad.status().as_u16(), no_key.status().as_u16()), (200, 400, 401));
    let ids: Vec<String> =
        [&ok, &bad, &no_key].iter().map(|r| id(r).expect("x-request-id on every response")).collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
    let mine =
        http().post(&url).bearer_auth(&gw.key).header("x-request-id", "app-trace-42").json(&chat).send().unwrap();
    assert_eq!(id(&mine).as_deref(), Some("app-trace-42"), "the app's own id is kept");

    // A browser app on the allowed origin: its preflight (with the OpenAI SDK's own headers) and
    // its request are let through and answered with CORS headers; any other origin is refused.
    let preflight = http()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,x-stainless-os")
        .send()
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], APP_ORIGIN);
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("x-stainless-os"), "{h:?}");
    let from_page = http().post(&url).bearer_auth(&gw.key).header("origin", APP_ORIGIN).json(&chat).send().unwrap();
    assert_eq!(from_page.status().as_u16(), 200);
    assert_eq!(from_page.headers()["access-control-allow-origin"], APP_ORIGIN);
    let exposed = from_page.headers()["access-control-expose-headers"].to_str().unwrap().to_string();
    assert!(exposed.contains("x-request-id") && exposed.contains("x-plexus-provider"), "{exposed}");
    let foreign =
        http().post(&url).bearer_auth(&gw.key).header("origin", "https://evil.example").json(&chat).send().unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    assert!(foreign.headers().get("access-control-allow-origin").is_none());

    // One model, by name or by id; an unknown one is OpenAI's 404.
    let get_model = |m: &str| http().get(format!("{}/v1/models/{m}", gw.base)).bearer_auth(&gw.key).send().unwrap();
    let one: Value = get_model(CHAT).json().unwrap();
    assert_eq!((one["id"].as_str(), one["object"].as_str()), (Some(CHAT), Some("model")), "{one}");
    let by_id: Value = get_model(one["plexus"]["model_id"].as_str().unwrap()).json().unwrap();
    assert_eq!(by_id["id"], CHAT, "{by_id}");
    let missing = get_model("no-such-model");
    assert_eq!(missing.status().as_u16(), 404);
    let body: Value = missing.json().unwrap();
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
}

#[test]
fn bad_input_is_refused_unbilled_and_leaves_every_provider_in_service() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (devnet, info) = start_devnet(&home, 2, &["--claim-interval", "2", "--threads", "1"]);
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    // A gateway of the test's own that never probes, so nothing but the test's requests is billed.
    let gw = gateway(
        dir.path(),
        "gw-bad",
        &info,
        &api,
        &[],
        &["--probe-interval", "0", "--audit-rate", "0", "--allow-origin", APP_ORIGIN],
    );

    // Edge cases that are good input: zeros, a constant, tiny magnitudes. The graphs guard their
    // own divisions (the demand model's window mean may be 0), so each gets finite outputs and
    // is billed its one row.
    for (name, input, width) in TENSORS {
        for (what, x) in [("zeros", 0.0f32), ("a constant", 7.0), ("tiny values", 1e-30), ("subnormals", 1e-44)] {
            let before = paid_total(&gw);
            let (code, text) = gw.post(&format!("/v2/models/{name}/infer"), &infer(input, &[vec![x; width]]));
            assert_eq!(code, 200, "{name} with {what}: {text}");
            let answer: Value = serde_json::from_str(&text).unwrap();
            for o in answer["outputs"].as_array().unwrap() {
                assert!(o["data"].as_array().unwrap().iter().all(Value::is_number), "{name} with {what}: {o}");
            }
            assert_eq!(paid_total(&gw), before + 1, "{name} with {what}: one inference billed");
        }
    }
    // One good request of every other kind, so each model has a session and a price paid.
    for i in [3, 4] {
        let (path, body) = good(i);
        let (code, text) = gw.post(&path, &body);
        assert_eq!(code, 200, "{path}: {text}");
    }
    what_clients_and_browsers_expect(&gw);
    let models: Value =
        http().get(format!("{}/v1/models", gw.base)).bearer_auth(&gw.key).send().unwrap().json().unwrap();
    let context = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == CHAT)
        .map(|m| m["plexus"]["manifest"]["context_length"].as_u64().unwrap())
        .unwrap();
    // How many words fill the context exactly: the refusal of an impossible max_tokens says how
    // long the prompt is.
    let probe = 1_000;
    let (code, text) = gw.post(
        "/v1/chat/completions",
        &json!({ "model": CHAT, "max_tokens": 4_000_000_000u64, "messages": [{ "role": "user", "content": words(probe) }] }),
    );
    assert_eq!(code, 400, "{text}");
    let said: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(said["error"]["code"], "context_length_exceeded", "{said}");
    assert_eq!(said["error"]["param"], "max_tokens", "{said}");
    let prompt: u64 = said["error"]["message"].as_str().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    let overhead = prompt - probe;
    // A provider's slots may hold less than the model's context (the devnet's: 2,048 tokens per
    // request of SmolLM2's 8,192): a prompt the gateway admits but the provider cannot hold is
    // refused by the provider, passed on as it said it, and counts against no one.
    let (code, text) = gw.post(
        "/v1/chat/completions",
        &json!({ "model": CHAT, "messages": [{ "role": "user", "content": words(context / 2) }] }),
    );
    let refusal = message(&text).unwrap();
    assert_eq!(code, 400, "{text}");
    let at_most = |m: &str| -> u64 {
        let rest = &m[m.find("at most ").expect("the limit") + 8..];
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    let limit = at_most(&refusal) + 1;
    assert!(limit <= context, "{refusal}");
    let at = limit - overhead;
    // One word less fits, with room for one token: served, and billed for exactly that.
    let (code, text) = gw.post(
        "/v1/chat/completions",
        &json!({ "model": CHAT, "temperature": 0, "max_tokens": 1,
                 "messages": [{ "role": "user", "content": words(at - 1) }] }),
    );
    assert_eq!(code, 200, "a prompt one token short of the context: {text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["usage"]["prompt_tokens"], limit - 1, "{}", answer["usage"]);
    assert_eq!(answer["usage"]["completion_tokens"], 1, "{}", answer["usage"]);
    eprintln!("context: the model's {context}, a provider's {limit} per request; {overhead} tokens of chat template");

    let clean = books(&gw);
    assert_eq!(clean.standing, json!([]), "every provider in good standing: {:?}", clean.standing);
    for (what, path, body) in bad_requests(context, at) {
        let (code, text) = post_raw(&gw, &path, body);
        let said = message(&text);
        eprintln!(
            "bad input: {what}: {code} {}",
            said.as_deref().unwrap_or(&text).chars().take(160).collect::<String>()
        );
        assert!((400..500).contains(&code), "{what}: {code} {text}");
        assert!(said.as_deref().is_some_and(|m| m.len() >= 10), "{what}: a clear message, not {text}");
        assert_eq!(books(&gw), clean, "{what}: nothing billed, no provider's standing moved");
    }

    // A stream whose samples the model cannot take: 1007 with the reason, nothing paid.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (what, samples, want) in [
        ("samples outside the range", vec![5e6f32; 256], "outside the range"),
        ("a NaN sample", [vec![0.1f32; 100], vec![f32::NAN], vec![0.1; 155]].concat(), "not a finite number"),
    ] {
        let (code, reason) = runtime.block_on(async {
            let ws = open(&gw, "/v2/models/ecg-heartbeat/stream?hop=256").await;
            let (mut tx, mut rx) = ws.split();
            let _ = tx.send(binary(&samples)).await;
            let (_, code, reason) = drain(&mut rx).await;
            (code, reason)
        });
        eprintln!("bad stream: {what}: {code} {reason}");
        assert_eq!(code, 1007, "{what}: {reason}");
        assert!(reason.contains(want), "{what}: {reason}");
        assert_eq!(books(&gw), clean, "{what}: nothing billed, no provider's standing moved");
    }

    // The next good request to every model is served, and a good stream window is paid.
    for i in 0..5 {
        let (path, body) = good(i);
        let (code, text) = gw.post(&path, &body);
        assert_eq!(code, 200, "after the bad input, {path}: {text}");
    }
    let streamed = runtime.block_on(async {
        let ws = open(&gw, "/v2/models/ecg-heartbeat/stream?hop=256").await;
        let (mut tx, mut rx) = ws.split();
        let wave: Vec<f32> = (0..256).map(|i| (i as f32 * 0.05).sin()).collect();
        tx.send(binary(&wave)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(60), rx.next()).await.unwrap().unwrap().unwrap();
        let _ = tx.close().await;
        first.to_text().unwrap().to_string()
    });
    assert!(streamed.contains("\"outputs\""), "{streamed}");
    let ready = http().get(format!("{}/v2/health/ready", gw.base)).send().unwrap();
    assert_eq!(ready.status().as_u16(), 200, "the gateway is ready");

    // Under load: 8 clients, 1,100 requests, every 11th bad. Not one good request fails.
    let bad = bad_requests(context, at);
    let load_started = std::time::Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for client in 0..8 {
            let (gw, bad, failures) = (&gw, &bad, &failures);
            scope.spawn(move || {
                for k in 0..1_100 / 8 + usize::from(client < 1_100 % 8) {
                    let n = k * 8 + client;
                    if n % 11 == 10 {
                        let (what, path, body) = &bad[(n / 11) % bad.len()];
                        let (code, text) = post_raw(gw, path, body.clone());
                        if !(400..500).contains(&code) {
                            failures.lock().unwrap().push(format!("bad {what}: {code} {text}"));
                        }
                    } else {
                        let (path, body) = good(n);
                        let (code, text) = gw.post(&path, &body);
                        if code != 200 {
                            failures.lock().unwrap().push(format!("good {path}: {code} {text}"));
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 1,100 requests went wrong: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let standing = gw.status()["standing"].clone();
    for s in standing.as_array().unwrap() {
        assert_eq!((s["lies"].as_u64(), s["strikes"].as_u64()), (Some(0), Some(0)), "no provider caught lying: {s}");
    }
    eprintln!(
        "under load: 1,000 good and 100 bad requests from 8 clients in {:.1} s, 0 failed; standing after: {standing}",
        load_started.elapsed().as_secs_f64()
    );
    drop(devnet);
}
