//! Writing results: one `## <name>` section of `docs/benchmarks.md` per benchmark, replaced
//! in place on every run so the file always holds the latest measurement of each.

use std::path::Path;

use anyhow::Context as _;

/// The machine the numbers were measured on, in one line.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb / (1 << 20));
    format!("{model}, {cpus} CPUs, {mem_gib} GiB, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The commit the numbers belong to (`+dirty` when the tree has changes).
pub fn commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| o.stdout)
    };
    let hash = run(&["rev-parse", "--short", "HEAD"]).map(|o| String::from_utf8_lossy(&o).trim().to_string());
    let dirty = run(&["status", "--porcelain"]).is_some_and(|o| !o.is_empty());
    format!("{}{}", hash.unwrap_or_else(|| "unknown".into()), if dirty { "+dirty" } else { "" })
}

/// Replaces the `## <title>` section of `docs` (up to the next `## `) with `body`, or appends it.
pub fn write_section(docs: &Path, title: &str, body: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(docs).unwrap_or_else(|_| {
        "# Benchmarks\n\nMeasured on this repository's own machines; each section says how to reproduce it.\n".into()
    });
    let heading = format!("## {title}\n");
    let section = format!("{heading}\n{}\n", body.trim_end());
    let updated = match existing.find(&heading) {
        Some(start) => {
            let rest = &existing[start + heading.len()..];
            let end = rest.find("\n## ").map_or(existing.len(), |i| start + heading.len() + i + 1);
            // A blank line before the next section, as Markdown wants.
            let gap = if end < existing.len() { "\n" } else { "" };
            format!("{}{}{}{}", &existing[..start], section, gap, &existing[end..])
        }
        None => format!("{}\n{}", existing.trim_end_matches('\n').to_string() + "\n", section),
    };
    if let Some(dir) = docs.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(docs, updated).with_context(|| format!("cannot write {}", docs.display()))
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("plexus-bench-{}", std::process::id()));
        let docs = dir.join("b.md");
        write_section(&docs, "Chain", "one").unwrap();
        write_section(&docs, "Inference", "two").unwrap();
        write_section(&docs, "Chain", "three").unwrap();
        let text = std::fs::read_to_string(&docs).unwrap();
        assert!(text.contains("## Chain\n\nthree\n\n## Inference"), "{text}");
        assert!(text.contains("## Inference\n\ntwo\n"));
        assert!(!text.contains("one"));
        assert!(text.find("## Chain").unwrap() < text.find("## Inference").unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
