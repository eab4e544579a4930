//! Key files: `{"address": "<hex>", "secret": "<hex>"}`, created readable by the owner only.

use std::io::Write as _;
use std::path::Path;

use plexus_types::{Address, PrivateKey};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct KeyFile {
    address: Address,
    secret: String,
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write key file {0}: {1}")]
    Write(String, std::io::Error),
    #[error("key file {0} is malformed: {1}")]
    Malformed(String, String),
    #[error("key file {0} already exists; refusing to overwrite a key")]
    Exists(String),
}

/// Reads a key file, checking the address matches the secret.
pub fn load(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Read(name.clone(), e))?;
    let file: KeyFile =
        serde_json::from_str(&text).map_err(|e| KeyFileError::Malformed(name.clone(), e.to_string()))?;
    let secret = hex::decode(file.secret.trim()).map_err(|e| KeyFileError::Malformed(name.clone(), e.to_string()))?;
    let key =
        PrivateKey::from_secret_bytes(&secret).map_err(|e| KeyFileError::Malformed(name.clone(), e.to_string()))?;
    if key.address() != file.address {
        return Err(KeyFileError::Malformed(name, "address does not match the secret".into()));
    }
    Ok(key)
}

/// Writes a new key file (mode 0600). Never overwrites.
pub fn save(path: &Path, key: &PrivateKey) -> Result<(), KeyFileError> {
    let name = path.display().to_string();
    let file = KeyFile { address: key.address(), secret: hex::encode(key.secret_bytes()) };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists(name.clone()),
        _ => KeyFileError::Write(name.clone(), e),
    })?;
    let text = serde_json::to_string_pretty(&file).expect("key file serializes");
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| KeyFileError::Write(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_never_overwrites_and_rejects_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let key = PrivateKey::generate();
        save(&path, &key).unwrap();
        assert_eq!(load(&path).unwrap().address(), key.address());
        assert!(matches!(save(&path, &key), Err(KeyFileError::Exists(_))));
        let other = PrivateKey::generate();
        let text = format!(r#"{{"address":"{}","secret":"{}"}}"#, other.address(), hex::encode(key.secret_bytes()));
        std::fs::write(dir.path().join("bad.json"), text).unwrap();
        assert!(load(&dir.path().join("bad.json")).unwrap_err().to_string().contains("does not match"));
    }
}
