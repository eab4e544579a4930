//! The set-up scripts' checks, run against fake file trees: what a fresh machine has decides
//! what `./scripts/devnet` and `./scripts/test` install, so the detection must match what the
//! tools really load.

use std::path::Path;
use std::process::Command;

fn scripts() -> std::path::PathBuf {
    crate::util::manifest_dir().join("../../scripts").canonicalize().unwrap()
}

/// Runs `find_libclang` from `scripts/lib.sh` over the search directories of `root`; the path
/// it picked, or `None` when it found nothing bindgen could load.
fn detect(root: &Path) -> Option<String> {
    let script = format!(
        "source '{}/lib.sh'; mapfile -t dirs < <(libclang_search_dirs '{}'); find_libclang \"${{dirs[@]}}\"",
        scripts().display(),
        root.display()
    );
    let out = Command::new("bash").arg("-c").arg(script).env_remove("LIBCLANG_PATH").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap().trim().to_string();
    match out.status.code() {
        Some(0) => Some(text.trim_start_matches(&root.display().to_string()).to_string()),
        Some(1) => None,
        other => panic!("detection failed to run ({other:?}): {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn touch(root: &Path, path: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

#[test]
fn libclang_detection_ignores_libclang_cpp() {
    // A fresh Debian 12 machine: the compiler brought libclang-cpp, which bindgen cannot use.
    let fresh = tempfile::tempdir().unwrap();
    touch(fresh.path(), "/usr/lib/llvm-14/lib/libclang-cpp.so.14");
    touch(fresh.path(), "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    assert_eq!(detect(fresh.path()), None, "libclang-cpp must not count as libclang");

    // What `apt-get install libclang-dev` (via libclang1-14) adds on Debian 12.
    touch(fresh.path(), "/usr/lib/llvm-14/lib/libclang-14.so.1");
    assert_eq!(detect(fresh.path()).as_deref(), Some("/usr/lib/llvm-14/lib/libclang-14.so.1"));

    // The unversioned name, and Ubuntu's multiarch directory.
    let plain = tempfile::tempdir().unwrap();
    touch(plain.path(), "/usr/lib/x86_64-linux-gnu/libclang.so");
    assert_eq!(detect(plain.path()).as_deref(), Some("/usr/lib/x86_64-linux-gnu/libclang.so"));
    let suffixed = tempfile::tempdir().unwrap();
    touch(suffixed.path(), "/usr/lib/aarch64-linux-gnu/libclang.so.1");
    assert_eq!(detect(suffixed.path()).as_deref(), Some("/usr/lib/aarch64-linux-gnu/libclang.so.1"));

    // Nothing at all.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(detect(empty.path()), None);
}
