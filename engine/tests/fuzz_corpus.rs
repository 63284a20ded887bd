//! Replays the committed fuzz corpora and crash artifacts through the harnesses of
//! `ils_engine::fuzz`, so every input the fuzzer ever kept (and every crash it found) stays
//! fixed on stable Rust without `cargo fuzz`.
//!
//! Layout: `tools/fuzz/corpus/<target>/*` and `tools/fuzz/artifacts/<target>/*`.
//!
//! `cargo test -p ils-engine --test fuzz_corpus -- --ignored write_seed_corpus` (re)writes the
//! generated seeds (`ils_engine::fuzz::seed_corpus`) into the corpus directories.

use std::path::{Path, PathBuf};

use ils_engine::fuzz::{seed_corpus, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/fuzz")
}

fn harness(name: &str) -> Option<ils_engine::fuzz::Harness> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Every regular file directly inside `dir` (none if it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = fuzz_dir().join(kind);
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(&root) else {
        return 0;
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        // `<target>.min` etc. are transient directories of tools/fuzz/run.sh
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.contains('.'))
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let f = harness(&name).unwrap_or_else(|| panic!("{kind}/{name}: no harness of that name"));
        for file in files(&dir) {
            let data = std::fs::read(&file).expect("read corpus file");
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{} panics", file.display());
            n += 1;
        }
    }
    n
}

#[test]
fn corpus_replays_without_panic() {
    let n = replay("corpus");
    // Every target must keep a corpus (a deleted directory would silently disable its replay).
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        assert!(
            !files(&dir).is_empty(),
            "no corpus for target {name} in {}",
            dir.display()
        );
    }
    eprintln!("replayed {n} corpus inputs");
}

#[test]
fn artifacts_replay_without_panic() {
    let n = replay("artifacts");
    eprintln!("replayed {n} crash artifacts");
}

#[test]
fn generated_seeds_replay_without_panic() {
    for (name, data) in seed_corpus() {
        let f = harness(name).expect("seed for a known target");
        f(&data);
    }
}

/// FNV-1a, for stable seed file names.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
#[ignore = "writes files: run explicitly to regenerate the seed corpus"]
fn write_seed_corpus() {
    for (name, data) in seed_corpus() {
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        let path = dir.join(format!("seed-{:016x}", fnv(&data)));
        std::fs::write(&path, &data).expect("write seed");
    }
}
