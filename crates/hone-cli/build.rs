//! Puts the git commit the binary is built from into `hone --version` (HONE_GIT_COMMIT), so a
//! bug report names the exact code. Outside a git checkout (a source tarball) it is left empty.

use std::path::Path;
use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            // `git status` may rewrite the index, which would make this script run again.
            .env("GIT_OPTIONAL_LOCKS", "0")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let suffix = match (commit.is_empty(), dirty) {
        (true, _) => String::new(),
        (false, false) => format!(" ({commit})"),
        (false, true) => format!(" ({commit}, modified)"),
    };
    println!("cargo:rustc-env=HONE_GIT_SUFFIX={suffix}");
    // Built again when HEAD moves: the files git changes on a checkout or commit.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = Path::new(&dir);
        for file in ["HEAD", "index", "packed-refs"] {
            println!("cargo:rerun-if-changed={}", dir.join(file).display());
        }
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(head).display());
        }
    }
}
