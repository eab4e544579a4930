//! What an operator's tools read from the binary: `--version`, JSON logs, shell completions and
//! man pages, from the real `plexus` binary.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{free_port_block, plexus};

#[test]
fn version_json_logs_completions_and_man_pages_are_what_fleet_tools_read() {
    let out = plexus().arg("--version").output().unwrap();
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    for want in ["target: ", "CPU features assumed", "layers: consensus ", ", execution ", ", network "] {
        assert!(version.contains(want), "{want}: {version}");
    }

    let out = plexus().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_plexus") && script.contains("complete -F"), "{}", &script[..script.len().min(300)]);
    assert!(script.contains("gateway") && script.contains("--log-format"), "every subcommand and global flag");

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    assert!(plexus().arg("man").arg(&pages).status().unwrap().success());
    let top = std::fs::read_to_string(pages.join("plexus.1")).unwrap();
    assert!(top.contains(".TH plexus"), "{}", &top[..top.len().min(300)]);
    assert!(pages.join("plexus-node-run.1").exists(), "a page per subcommand");

    // A bad format is a usage error that names the choices, not a crash.
    let out = plexus().args(["--log-format", "xml", "model", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("json"), "{}", String::from_utf8_lossy(&out.stderr));

    // JSON logs: every line a JSON object with a level and a message.
    let port = free_port_block(1);
    let mut child = plexus()
        .args(["--log-format", "json", "serve", "-m", "ecg-heartbeat", "--port", &port.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else { break None };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["target"].is_string(), "{v}");
        seen.push(v.clone());
        if v["fields"]["message"].as_str().is_some_and(|m| m.contains("ready")) {
            break Some(v);
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let ready = ready.unwrap_or_else(|| panic!("no `ready` line in the JSON logs: {seen:?}"));
    assert_eq!(ready["level"], "INFO", "{ready}");
}
