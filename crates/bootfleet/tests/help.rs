//! Golden `--help` of every command and subcommand, from the real binary:
//! a change to any flag, default or description shows up as a diff here.
//! `BOOTFLEET_GOLDEN_BLESS=1` rewrites the files under tests/golden/.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");

/// Runs `bootfleet <path…> --help` with no BOOTFLEET_* variables (clap
/// would show their values) and a fixed terminal width.
fn help(path: &[String]) -> String {
    let mut command = Command::new(BIN);
    command.args(path).arg("--help");
    for (key, _) in std::env::vars() {
        if key.starts_with("BOOTFLEET_") || key == "COMPLETE" {
            command.env_remove(key);
        }
    }
    let out = command.env("COLUMNS", "100").env("NO_COLOR", "1").output().unwrap();
    assert!(out.status.success(), "bootfleet {path:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands listed under "Commands:" in a help text (not `help`).
fn subcommands(text: &str) -> Vec<String> {
    let Some(start) = text.find("\nCommands:\n") else { return Vec::new() };
    text[start + "\nCommands:\n".len()..]
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn help_matches_the_golden_files() {
    let bless = std::env::var_os("BOOTFLEET_GOLDEN_BLESS").is_some_and(|v| v == "1");
    let dir = golden_dir();
    let mut pending = vec![Vec::<String>::new()];
    let mut seen = Vec::new();
    let mut mismatched = Vec::new();
    while let Some(path) = pending.pop() {
        let text = help(&path);
        for sub in subcommands(&text) {
            let mut deeper = path.clone();
            deeper.push(sub);
            pending.push(deeper);
        }
        let name =
            if path.is_empty() { "bootfleet.txt".to_owned() } else { format!("{}.txt", path.join("-")) };
        let file = dir.join(&name);
        seen.push(name.clone());
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &text).unwrap();
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            mismatched.push(format!("{name}:\n{text}"));
        }
    }
    assert!(seen.len() > 20, "walked only {seen:?}");
    // A golden file without a command means one was removed or renamed.
    let mut stale: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !seen.contains(name))
        .collect();
    stale.sort();
    if bless {
        for name in &stale {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        return;
    }
    assert!(
        stale.is_empty(),
        "golden files for no command: {stale:?} (BOOTFLEET_GOLDEN_BLESS=1 removes them)"
    );
    assert!(
        mismatched.is_empty(),
        "help differs from tests/golden (BOOTFLEET_GOLDEN_BLESS=1 rewrites it):\n{}",
        mismatched.join("\n")
    );
}
