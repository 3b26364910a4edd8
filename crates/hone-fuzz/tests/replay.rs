//! Every committed seed (`fuzz/seeds/TARGET`) and every input a fuzzer once failed on
//! (`fuzz/regressions/TARGET`) goes through its target again: the bodies stay exercised on each
//! `cargo test`, and a finding, once fixed, stays fixed.

use std::path::{Path, PathBuf};

fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target)
}

#[test]
fn every_seed_and_regression_runs_through_its_target() {
    for &(name, target) in hone_fuzz::TARGETS {
        let seeds = inputs(&fuzz_dir("seeds", name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} has no seeds");
        for input in seeds.iter().chain(&inputs(&fuzz_dir("regressions", name))) {
            let data = std::fs::read(input).expect("a readable input");
            eprintln!("{name}: {}", input.display());
            target(&data);
        }
    }
}

#[test]
fn every_target_has_a_fuzz_binary() {
    for &(name, _) in hone_fuzz::TARGETS {
        let binary = fuzz_dir("fuzz_targets", "").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&binary)
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        assert!(
            text.contains(&format!("hone_fuzz::{name}(")),
            "{} does not run hone_fuzz::{name}",
            binary.display()
        );
    }
}
