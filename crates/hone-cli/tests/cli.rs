//! The command line itself: `hone --version`, `hone completions` and mistakes in the arguments.

mod common;

use std::process::Command;

use common::hone;

/// The version names the crate's version and, in a git checkout, the commit it was built from.
#[test]
fn version_names_the_commit() {
    let out = hone(&["--version"]);
    let line = out.ok().trim_end();
    let version = concat!("hone ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(version), "{line}");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    if let Some(commit) = commit {
        assert!(
            line.contains(&format!("({commit}")),
            "{line} lacks {commit}"
        );
    }
}

/// Each shell's script, in that shell's own syntax, completes the subcommands.
#[test]
fn completions_cover_every_subcommand() {
    for (shell, marker) in [
        ("bash", "_hone()"),
        ("zsh", "#compdef hone"),
        ("fish", "complete -c hone"),
    ] {
        let out = hone(&["completions", shell]);
        let script = out.ok();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for command in ["train", "serve", "eval", "completions"] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
    }
}

/// A mistake on the command line is one `error:` line with clap's details and the usage, exit 2;
/// help still prints whole.
#[test]
fn argument_mistakes_are_one_line() {
    for (args, says) in [
        (
            &["completions", "tcsh"][..],
            "error: invalid value 'tcsh' for '<SHELL>' [possible values: bash, elvish, fish, \
             powershell, zsh]",
        ),
        (
            &["train"][..],
            "error: the following required arguments were not provided: <CONFIG> (usage: hone \
             train <CONFIG> [OVERRIDES]...)",
        ),
        (
            &["generate", "--model", "m", "--bogus"][..],
            "error: unexpected argument '--bogus' found",
        ),
    ] {
        let run = hone(args);
        assert_eq!(run.code, Some(2), "{args:?}");
        assert_eq!(run.stdout, "");
        let line = run.stderr.strip_suffix('\n').unwrap();
        assert!(!line.contains('\n'), "{args:?}: not one line: {line}");
        assert!(line.starts_with(says), "{args:?}: {line}");
    }
    let help = hone(&["train", "--help"]);
    assert!(help.ok().contains("Usage: hone train"));
}
