//! Checks the operator's console and the OpenAPI documents against live servers, with real
//! tools: Debian's headless `chromium` renders the console (its scripts run against the node's
//! API), and schemathesis fuzzes each server from the document it serves.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The DOM of `url` after its scripts ran (chromium waits for the page's fetches within a
/// virtual-time budget), and a screenshot of it written to `png`.
pub fn render(url: &str, png: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--window-size=1400,1000", "--virtual-time-budget=15000"])
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium runs (scripts/test installs Debian's chromium)");
        assert!(out.status.success(), "chromium {url}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[format!("--screenshot={}", png.display())]);
    assert!(std::fs::metadata(png).is_ok_and(|m| m.len() > 10_000), "a screenshot of {url} at {}", png.display());
    run(&["--dump-dom".to_string()])
}

/// Where screenshots go: kept after the test (under the build directory) so a person can look.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs schemathesis against the server at `base` with the OpenAPI document it serves: no 5xx,
/// every status code, content type and body as documented. Returns its output on failure.
pub fn schemathesis(base: &str, headers: &[String]) -> Result<String, String> {
    let python = std::env::var_os("PLEXUS_PYTHON").map(PathBuf::from);
    let cli = python
        .and_then(|p| p.parent().map(|d| d.join("schemathesis")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "schemathesis".into());
    // It keeps a cache of what it found in its working directory: a scratch one, not the checkout.
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&cli);
    cmd.current_dir(scratch.path())
        .args(["run", &format!("{base}/openapi.json"), "--url", base])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--seed",
            "7",
            // One worker: with two, Python 3.11 sometimes fails compiling schemathesis's
            // generated code on two threads at once ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--tls-verify",
            "false",
            "--phases",
            "examples,coverage,fuzzing",
            // Server-sent events never end: schemathesis would wait for the whole body.
            "--exclude-path",
            "/chain/v1/stream",
        ])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "");
    for h in headers {
        cmd.args(["--header", h]);
    }
    let out =
        cmd.output().unwrap_or_else(|e| panic!("run {} (scripts/test installs schemathesis): {e}", cli.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        // Its summary is at the end; a runtime error can print whole source files before it.
        let tail: String = text.chars().rev().take(8000).collect::<Vec<_>>().into_iter().rev().collect();
        Err(tail)
    }
}
