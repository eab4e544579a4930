//! Helpers for running `plexus` processes in tests.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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
