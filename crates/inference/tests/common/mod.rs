//! Helpers shared by the real-model tests.

use plexus_inference::models::ModelCache;

/// Tests run in separate processes; llama.cpp's OpenMP threads spin, so two engines decoding at
/// once on a small machine slow each other down many times over. Heavy tests take this lock.
pub fn serial() -> std::fs::File {
    let dir = ModelCache::from_env().root().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".test-lock")).unwrap();
    f.lock().unwrap();
    f
}

#[allow(dead_code)] // not every test binary sets thread counts
pub fn nz(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap()
}
