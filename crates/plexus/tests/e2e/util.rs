//! Helpers for running `plexus` processes in tests.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// This package's directory in the checkout being tested. Read at run time (cargo and nextest
/// set it): a build cache shared between checkouts may hold a test binary compiled in another.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

pub fn plexus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plexus"))
}

/// A base port with `count` consecutive ports free (checked by binding each).
pub fn free_port_block(count: u16) -> u16 {
    let seed = std::process::id() as u64 * 7919 + Instant::now().elapsed().as_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed + attempt * 1_237) % 30_000) as u16;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free block of {count} ports");
}

/// Kills a child process on drop so a failing test leaves nothing running.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

pub fn get(url: &str) -> Option<Value> {
    http().get(url).send().ok()?.json().ok()
}

/// A client for a devnet node's inference endpoint: TLS pinned to the node's key, as a gateway
/// reaches it.
pub fn provider_http(node: &Value) -> reqwest::blocking::Client {
    let address: plexus_types::Address = node["address"].as_str().unwrap().parse().unwrap();
    let tls = plexus_serve::tls::pinned_client_config(&address);
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .unwrap()
}

/// `get` from a devnet node's inference endpoint.
pub fn get_provider(node: &Value, path: &str) -> Option<Value> {
    let url = format!("{}{path}", node["inference"].as_str().unwrap());
    provider_http(node).get(url).send().ok()?.json().ok()
}

pub fn height(api: &str) -> Option<u64> {
    get(&format!("{api}/chain/v1/status"))?["height"].as_u64()
}

/// Waits until `f` returns `Some`, polling every 200 ms.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `plexus devnet up` and waits for its "running" banner; returns the guard and
/// `devnet.json`.
pub fn start_devnet(home: &Path, validators: u16, extra: &[&str]) -> (Guard, Value) {
    let base = free_port_block(10 * validators + 2);
    let mut child = plexus()
        .args(["devnet", "up", "--validators", &validators.to_string(), "--base-port", &base.to_string(), "--home"])
        .arg(home)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn plexus devnet up");
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("devnet exited before it was running").unwrap();
        if line.contains("Plexus devnet is running") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "devnet did not start");
    }
    // Keep draining stdout so the devnet never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let info: Value = serde_json::from_str(&std::fs::read_to_string(home.join("devnet.json")).unwrap()).unwrap();
    (guard, info)
}

/// A gateway of the test's own, on a free port.
pub struct Gw {
    _process: Option<Guard>,
    pub base: String,
    pub key: String,
}

impl Gw {
    /// A gateway someone else runs (e.g. the devnet's), at `base` (without `/v1`).
    pub fn running(base: &str, key: &str) -> Gw {
        Gw { _process: None, base: base.trim_end_matches("/v1").to_string(), key: key.to_string() }
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, String) {
        let (code, _, text) = self.post_full(path, body);
        (code, text)
    }

    /// The status, the provider that answered (`x-plexus-provider`) and the body.
    pub fn post_full(&self, path: &str, body: &Value) -> (u16, String, String) {
        let r = http()
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(180))
            .json(body)
            .send()
            .unwrap();
        let provider = r.headers().get("x-plexus-provider").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        (r.status().as_u16(), provider, r.text().unwrap())
    }

    /// Asks the gateway to close its sessions (providers then settle and the rest is refunded).
    pub fn close(&self) {
        let closed = http()
            .post(format!("{}/plexus/v1/close", self.base))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(60))
            .send()
            .unwrap();
        assert!(closed.status().is_success(), "closing the gateway's sessions: {}", closed.status());
    }

    pub fn status(&self) -> Value {
        http().get(format!("{}/plexus/v1/status", self.base)).bearer_auth(&self.key).send().unwrap().json().unwrap()
    }
}

/// A gateway of its own (fresh home, so a fresh memory of who lied) using only `providers`
/// (any when empty), reading the chain from `api`, with `extra` arguments.
pub fn gateway(dir: &Path, name: &str, info: &Value, api: &str, providers: &[&str], extra: &[&str]) -> Gw {
    let port = free_port_block(1);
    let home = dir.join(name);
    let key = format!("test-key-{name}-0123456789");
    let mut cmd = plexus();
    cmd.args(["gateway", "--listen", &format!("127.0.0.1:{port}"), "--deposit", "2plx", "--home"])
        .arg(&home)
        .arg("--key")
        .arg(info["client"]["key_file"].as_str().unwrap())
        .args(["--node", api])
        .args(extra)
        .env("PLEXUS_GATEWAY_API_KEY", &key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    for p in providers {
        cmd.args(["--provider", p]);
    }
    let process = Guard(cmd.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the gateway", Duration::from_secs(60), || get(&format!("{base}/health")));
    Gw { _process: Some(process), base, key }
}

/// Starts a devnet node again (after it was stopped) with `var=value` set, e.g. a test build's
/// dishonest provider; waits until it serves inference.
pub fn restart_with(node: &Value, var: &str, value: &str) -> Guard {
    let home = node["home"].as_str().unwrap();
    let log = std::fs::OpenOptions::new().append(true).open(Path::new(home).join("node.log")).unwrap();
    let g = Guard(
        plexus()
            .args(["node", "run", "--home", home])
            .env(var, value)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("the restarted provider serves", Duration::from_secs(120), || get_provider(node, "/health"));
    g
}

pub fn stop(pid: u64) {
    // SAFETY: signalling a process this test started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// An amount as the API writes it: a JSON number (of any size) or a string.
pub fn amount(v: &Value) -> plexus_types::Amount {
    match v {
        Value::Number(n) => n.to_string().parse().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        other => panic!("not an amount: {other}"),
    }
}

/// What `provider` was paid in blocks `from..=to`, from the `session_settled` events read
/// through `get`: (settled, net of the protocol fee).
pub fn settled_to(
    get: impl Fn(String) -> Option<Value>,
    api: &str,
    provider: &str,
    from: u64,
    to: u64,
) -> (plexus_types::Amount, plexus_types::Amount) {
    let (mut settled, mut earned) = (0, 0);
    for h in from..=to {
        let block = get(format!("{api}/chain/v1/blocks/{h}")).unwrap();
        for tx in block["results"]["txs"].as_array().into_iter().flatten() {
            for e in tx["events"].as_array().into_iter().flatten() {
                if e["type"] == "session_settled" && e["provider"] == provider {
                    settled += amount(&e["amount"]);
                    earned += amount(&e["amount"]) - amount(&e["fee"]);
                }
            }
        }
    }
    (settled, earned)
}

/// A KServe v2 request for the ECG model: one synthetic heartbeat window.
pub fn beat() -> Value {
    let window: Vec<f32> = (0..256).map(|i| (-((i as f32 - 90.0) / 6.0).powi(2)).exp()).collect();
    serde_json::json!({ "inputs": [{ "name": "ecg_window", "shape": [1, 256], "datatype": "FP32", "data": window }] })
}

/// Runs `tests/python/kserve_e2e.py` (Triton's own client, binary tensors by default) against
/// the KServe routes at `base` for `model`, whose held-out samples are in `heldout`; `key` is a
/// gateway's API key. Returns the rows it inferred (each one paid for through a gateway).
pub fn kserve_python(base: &str, model: &str, heldout: &Path, key: &str) -> u64 {
    let script = manifest_dir().join("tests/python/kserve_e2e.py");
    let python = std::env::var_os("PLEXUS_PYTHON").unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .arg(base)
        .arg(model)
        .arg(heldout)
        .arg(key)
        .output()
        .expect("run python3 (with `pip install tritonclient[http]`; ./scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kserve_e2e.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("kserve e2e: OK"), "{stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("inferences="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("kserve_e2e.py printed no count: {stdout}"))
}
