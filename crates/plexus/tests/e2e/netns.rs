//! Several machines, each a Linux network namespace with its own address on a shared bridge
//! (iproute2, veth): four validators, a provider that joins later from its own host, and a
//! gateway on yet another host. The provider syncs, registers, serves a paid request over TLS
//! through the gateway and is paid; one validator's host is cut off and healed and catches up.
//! WAN latency comes from `tc netem` where the kernel has it; elsewhere from a relay in front of
//! each validator's p2p port that holds every byte for a set time in each direction (each pair
//! of validators shares one connection, through the dialled one's relay, so RTT = 2 x delay).
//! Everything lives in the test's own namespaces; it needs root (CAP_NET_ADMIN) and skips,
//! saying so, without it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plexus_types::Amount;
use serde_json::{Value, json};

use crate::util::*;

/// The test's namespaces: a switch (the bridge) and one per host. Deleted on drop, which also
/// removes their links and kills nothing (the processes' guards are dropped first).
struct Lab {
    prefix: String,
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
    }
}

impl Lab {
    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }
    fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }
    fn addr(i: usize) -> String {
        format!("10.77.0.{}", 10 + i)
    }
    fn uplink(&self, i: usize) -> String {
        format!("{}b{i}", self.prefix)
    }

    fn build(hosts: usize) -> Result<Lab, String> {
        let lab = Lab { prefix: format!("px{}", std::process::id()), hosts };
        ip(&["netns", "add", &lab.switch()])?;
        ip(&["-n", &lab.switch(), "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch(), "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let (host, uplink) = (lab.host(i), lab.uplink(i));
            ip(&["netns", "add", &host])?;
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                &uplink,
                "netns",
                &lab.switch(),
            ])?;
            ip(&["-n", &lab.switch(), "link", "set", &uplink, "master", "br0", "up"])?;
            ip(&["-n", &host, "addr", "add", &format!("{}/24", Lab::addr(i)), "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Adds `one_way_ms` of delay and `loss_pct` loss on every host's link (RTT = 2 x delay);
    /// false when the kernel has no netem.
    fn wan(&self, one_way_ms: u32, loss_pct: &str) -> bool {
        (1..=self.hosts).all(|i| {
            Command::new("tc")
                .args(["-n", &self.host(i), "qdisc", "replace", "dev", "eth0", "root", "netem"])
                .args(["delay", &format!("{one_way_ms}ms"), "loss", &format!("{loss_pct}%")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    fn set_link(&self, i: usize, up: bool) {
        ip(&["-n", &self.switch(), "link", "set", &self.uplink(i), if up { "up" } else { "down" }]).unwrap();
    }

    /// Runs `plexus args` on host `i`, logging to `log`.
    fn spawn(&self, i: usize, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Guard {
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(i), env!("CARGO_BIN_EXE_plexus")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Guard(cmd.spawn().unwrap())
    }

    /// Runs `plexus args` on host `i` to completion.
    fn run(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host(i), env!("CARGO_BIN_EXE_plexus")])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    /// Runs `f` on a thread inside host `i`'s network namespace (sockets it opens are there).
    fn on<T: Send + 'static>(&self, i: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.host(i));
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap()
    }

    fn get(&self, i: usize, url: String) -> Option<Value> {
        self.on(i, move || get(&url))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let _ = ip(&["netns", "del", &self.host(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

/// `wait_for`, but a timeout shows the end of `log` (the temporary directory goes with the test).
fn wait_logged<T>(what: &str, limit: Duration, log: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if started.elapsed() > limit {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("timed out after {limit:?} waiting for {what}; {}:\n{}", log.display(), tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Enters the network namespace at `path` (this thread and the threads it spawns).
fn enter(path: &str) {
    let ns = std::fs::File::open(path).unwrap();
    // SAFETY: switches only this thread's network namespace, to a file we opened.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Relays TCP connections from `listen` to `target` inside host `i`, holding each chunk for
/// `delay_ms` in each direction (in order; 0 passes bytes straight on).
fn relay(lab: &Lab, i: usize, listen: SocketAddr, target: SocketAddr, delay_ms: Arc<AtomicU64>) {
    let path = format!("/run/netns/{}", lab.host(i));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&path);
        let listener = TcpListener::bind(listen).unwrap();
        ready_tx.send(()).unwrap();
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { continue };
            let Ok(outbound) = TcpStream::connect(target) else { continue };
            for s in [&inbound, &outbound] {
                s.set_nodelay(true).ok();
            }
            pipe(inbound.try_clone().unwrap(), outbound.try_clone().unwrap(), delay_ms.clone());
            pipe(outbound, inbound, delay_ms.clone());
        }
    });
    ready.recv().unwrap();
}

/// One direction of a relayed connection: a reader stamps each chunk with when it is due, a
/// writer sends it then. Either side closing closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay_ms: Arc<AtomicU64>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(4096);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            let due = Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        to.shutdown(Shutdown::Both).ok();
    });
}

fn api(i: usize) -> String {
    format!("http://{}:8545", Lab::addr(i))
}

/// Finality latency seen from host 1 for `window`: for each new final block, the time from its
/// proposer's timestamp to when host 1 reports it final (one machine, one clock). Returns
/// (p50, p99, blocks).
fn finality(lab: &Lab, window: Duration) -> (u64, u64, usize) {
    let url = format!("{}/chain/v1/status", api(1));
    let mut samples = lab.on(1, move || {
        let client = http();
        let started = Instant::now();
        let mut last = 0;
        let mut samples = Vec::new();
        while started.elapsed() < window {
            if let Some(s) = client.get(&url).send().ok().and_then(|r| r.json::<Value>().ok()) {
                let h = s["height"].as_u64().unwrap_or(0);
                if h > last && last > 0 {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
                    samples.push((now as u64).saturating_sub(s["latest_block_time_ms"].as_u64().unwrap_or(0)));
                }
                last = last.max(h);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        samples
    });
    samples.sort_unstable();
    assert!(samples.len() >= 5, "the chain kept finalizing: {} blocks", samples.len());
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), samples.len())
}

#[test]
fn validators_on_separate_hosts_a_late_provider_joins_and_is_paid_and_a_cut_off_host_catches_up() {
    // SAFETY: reads this process's effective uid.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the multi-host test needs root (network namespaces)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = match Lab::build(6) {
        Ok(lab) => lab,
        Err(e) => panic!("cannot build the test's network namespaces: {e}"),
    };

    // Four validators, each on its own host, from a genesis made with `plexus genesis`.
    let genesis = dir.path().join("genesis.json");
    let g = genesis.to_str().unwrap();
    let cli = |args: &[&str]| {
        let out = plexus().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    cli(&["genesis", "new", "--chain-id", "plexus-lab", "--epoch-length", "20", "--out", g]);
    let mut homes: Vec<PathBuf> = Vec::new();
    for i in 1..=4 {
        let home = dir.path().join(format!("v{i}"));
        let init: Value = serde_json::from_str(&cli(&[
            "node",
            "init",
            "--home",
            home.to_str().unwrap(),
            "--p2p-listen",
            &format!("{}:26656", Lab::addr(i)),
            "--api-listen",
            &format!("{}:8545", Lab::addr(i)),
            "--json",
        ]))
        .unwrap();
        let address = init["address"].as_str().unwrap();
        // Peers dial the relay in front of it (port 26666), which passes on to 26656; the
        // connections reach the node from its own host's address, not the dialler's.
        let config = home.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("any_source_ip = false", "any_source_ip = true")).unwrap();
        let p2p = format!("{}:26666", Lab::addr(i));
        cli(&[
            "genesis",
            "add-validator",
            "--file",
            g,
            "--address",
            address,
            "--stake",
            "10000plx",
            "--p2p-address",
            &p2p,
        ]);
        homes.push(home);
    }
    let client = dir.path().join("client.json");
    let client_address: Value =
        serde_json::from_str(&cli(&["keys", "new", "--out", client.to_str().unwrap(), "--json"])).unwrap();
    let client_address = client_address["address"].as_str().unwrap().to_string();
    cli(&["genesis", "add-account", "--file", g, "--address", &client_address, "--balance", "1000000plx"]);
    let delay_ms = Arc::new(AtomicU64::new(0));
    for i in 1..=4 {
        let (listen, target) = (format!("{}:26666", Lab::addr(i)), format!("{}:26656", Lab::addr(i)));
        relay(&lab, i, listen.parse().unwrap(), target.parse().unwrap(), delay_ms.clone());
    }
    let mut validators = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        std::fs::copy(&genesis, home.join("genesis.json")).unwrap();
        let args = ["node", "run", "--home", home.to_str().unwrap()];
        validators.push(lab.spawn(i + 1, &args, &home.join("node.log"), &[]));
    }
    wait_for("the hosts' chain to finalize", Duration::from_secs(120), || {
        (lab.get(1, format!("{}/chain/v1/status", api(1)))?["height"].as_u64()? > 10).then_some(())
    });

    // Finality between hosts, then with WAN latency where the kernel can add it.
    let (p50, p99, n) = finality(&lab, Duration::from_secs(15));
    eprintln!("netns finality, no added latency: p50 {p50} ms, p99 {p99} ms over {n} blocks");
    let netem = lab.wan(25, "0");
    if netem {
        let (p50, p99, n) = finality(&lab, Duration::from_secs(20));
        eprintln!("netns finality, 50 ms RTT: p50 {p50} ms, p99 {p99} ms over {n} blocks");
        assert!(lab.wan(75, "0"));
        let (p50, p99, n) = finality(&lab, Duration::from_secs(20));
        eprintln!("netns finality, 150 ms RTT: p50 {p50} ms, p99 {p99} ms over {n} blocks");
        assert!(lab.wan(25, "1"), "50 ms RTT and 1% loss for the rest");
    } else {
        eprintln!("netns: this kernel has no netem qdisc; WAN latency from the validators' relays (no loss)");
        for one_way in [25, 75] {
            delay_ms.store(one_way, Ordering::Relaxed);
            let (p50, p99, n) = finality(&lab, Duration::from_secs(20));
            eprintln!("netns finality, {} ms RTT (relay): p50 {p50} ms, p99 {p99} ms over {n} blocks", 2 * one_way);
        }
        delay_ms.store(0, Ordering::Relaxed);
    }

    // A provider on host 5 joins later, by the README's steps.
    let late = dir.path().join("late");
    let status = lab.get(1, format!("{}/chain/v1/status", api(1))).unwrap();
    let genesis_hash = status["node"]["genesis_hash"].as_str().unwrap().to_string();
    let (ok, out, err) = lab.run(
        5,
        &[
            "node",
            "init",
            "--home",
            late.to_str().unwrap(),
            "--join",
            &api(1),
            "--genesis-hash",
            &genesis_hash,
            "--p2p-listen",
            &format!("{}:26656", Lab::addr(5)),
            "--api-listen",
            &format!("{}:8545", Lab::addr(5)),
            "--provider",
            "--provider-listen",
            &format!("{}:8443", Lab::addr(5)),
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let init: Value = serde_json::from_str(&out).unwrap();
    let provider = init["address"].as_str().unwrap().to_string();
    let config = std::fs::read_to_string(late.join("config.toml"))
        .unwrap()
        .replace("models = [\"smollm2-135m-instruct\", \"all-minilm-l6-v2\"]", "models = [\"smollm2-135m-instruct\"]")
        .replace("claim_interval_secs = 15", "claim_interval_secs = 2")
        .replace("\nthreads = 0\n", "\nthreads = 1\n");
    std::fs::write(late.join("config.toml"), config).unwrap();
    let c = client.to_str().unwrap();
    let (ok, _, err) =
        lab.run(5, &["tx", "transfer", "--node", &api(1), "--key", c, "--to", &provider, "--amount", "1000plx"]);
    assert!(ok, "{err}");
    let stake: Vec<String> =
        init["stake_command"].as_str().unwrap().split_whitespace().skip(1).map(String::from).collect();
    let (ok, _, err) = lab.run(5, &stake.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{stake:?}: {err}");
    let _late = lab.spawn(5, &["node", "run", "--home", late.to_str().unwrap()], &late.join("node.log"), &[]);
    let endpoint = format!("https://{}:8443", Lab::addr(5));
    wait_logged("the late provider synced and registered", Duration::from_secs(240), &late.join("node.log"), || {
        let p = lab.get(2, format!("{}/chain/v1/providers/{provider}", api(2)))?;
        (p["endpoint"] == endpoint.as_str()).then_some(())
    });

    // A gateway on host 6 reaches it over TLS (a remote https endpoint) and pays it.
    let v1_log = homes[0].join("node.log");
    let account = |i: usize| {
        let url = format!("{}/chain/v1/accounts/{provider}", api(i));
        let a = wait_logged("an account", Duration::from_secs(30), &v1_log, || lab.get(i, url.clone()));
        (amount(&a["balance"]), a["nonce"].as_u64().unwrap_or(0))
    };
    let height_at = |i: usize| lab.get(i, format!("{}/chain/v1/status", api(i))).unwrap()["height"].as_u64().unwrap();
    let (before, nonce_before) = account(1);
    let start = height_at(1);
    let key = "lab-gateway-key-0123456789";
    let gw_home = dir.path().join("gw");
    let gw_base = format!("http://{}:8000", Lab::addr(6));
    let _gateway = lab.spawn(
        6,
        &[
            "gateway",
            "--listen",
            &format!("{}:8000", Lab::addr(6)),
            "--deposit",
            "2plx",
            "--home",
            gw_home.to_str().unwrap(),
            "--key",
            c,
            "--node",
            &api(2),
            "--provider",
            &provider,
        ],
        &dir.path().join("gateway.log"),
        &[("PLEXUS_GATEWAY_API_KEY", key)],
    );
    let health = format!("{gw_base}/health");
    wait_for("the gateway", Duration::from_secs(60), || {
        lab.on(6, {
            let h = health.clone();
            move || http().get(&h).send().ok().map(|_| ())
        })
    });
    // (A genesis from `plexus genesis new` starts at execution v1, which prices text models only.)
    let body = json!({
        "model": "smollm2-135m-instruct",
        "max_tokens": 8,
        "messages": [{ "role": "user", "content": "Name a river." }],
    });
    let (code, answered, text) = lab.on(6, {
        let url = format!("{gw_base}/v1/chat/completions");
        move || {
            let r = http().post(url).bearer_auth(key).timeout(Duration::from_secs(120)).json(&body).send().unwrap();
            let p = r.headers().get("x-plexus-provider").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (r.status().as_u16(), p, r.text().unwrap())
        }
    });
    assert_eq!(code, 200, "{text}");
    assert_eq!(answered, provider, "the provider on host 5 answered");
    let closed = lab.on(6, {
        let url = format!("{gw_base}/plexus/v1/close");
        move || {
            let r = http().post(url).bearer_auth(key).header("content-type", "application/json");
            r.timeout(Duration::from_secs(60)).send().map(|r| r.status().as_u16())
        }
    });
    assert_eq!(closed.ok(), Some(200));
    let sessions: Vec<String> = lab.on(6, {
        let url = format!("{gw_base}/plexus/v1/status");
        move || http().get(url).bearer_auth(key).send().unwrap().json::<Value>().unwrap()
    })["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!sessions.is_empty());
    wait_for("the session settled and closed", Duration::from_secs(180), || {
        sessions
            .iter()
            .all(|id| lab.get(1, format!("{}/chain/v1/sessions/{id}", api(1))).unwrap()["status"] == "closed")
            .then_some(())
    });
    let end = height_at(1);
    let (settled, earned) = settled_to(|url| lab.get(1, url), &api(1), &provider, start, end);
    assert!(settled > 0 && earned > 0 && earned <= settled, "the provider on host 5 was paid: {settled}, {earned}");
    let (after, nonce_after) = account(1);
    let fee = amount(&lab.get(1, format!("{}/chain/v1/params", api(1))).unwrap()["min_tx_fee"]);
    let fees = Amount::from(nonce_after - nonce_before) * fee;
    assert_eq!(after + fees, before + earned, "its settlements minus the protocol fee, less its own fees");

    // Host 4 is cut off: the other three keep finalizing; healed, it catches up.
    lab.set_link(4, false);
    let cut_at = lab.get(1, format!("{}/chain/v1/status", api(1))).unwrap()["height"].as_u64().unwrap();
    wait_for("three hosts finalize without the fourth", Duration::from_secs(120), || {
        (lab.get(1, format!("{}/chain/v1/status", api(1)))?["height"].as_u64()? > cut_at + 30).then_some(())
    });
    let stalled = lab.get(4, format!("{}/chain/v1/status", api(4))).unwrap()["height"].as_u64().unwrap();
    let now = lab.get(1, format!("{}/chain/v1/status", api(1))).unwrap()["height"].as_u64().unwrap();
    assert!(stalled + 20 < now, "the cut-off host fell behind: {stalled} vs {now}");
    lab.set_link(4, true);
    wait_for("the healed host catches up", Duration::from_secs(180), || {
        let theirs = lab.get(4, format!("{}/chain/v1/status", api(4)))?["height"].as_u64()?;
        let ours = lab.get(1, format!("{}/chain/v1/status", api(1)))?["height"].as_u64()?;
        (theirs + 5 >= ours && theirs > now).then_some(())
    });
    let at = lab.get(4, format!("{}/chain/v1/status", api(4))).unwrap();
    let same = lab.get(1, format!("{}/chain/v1/blocks/{}", api(1), at["height"])).unwrap();
    assert_eq!(at["latest_block_hash"], same["hash"], "the healed host is on the same chain");
    let supply = lab.get(1, format!("{}/chain/v1/supply", api(1))).unwrap();
    assert_eq!(supply["conserved"], true);
    drop(validators);
}
