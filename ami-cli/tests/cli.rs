//! The command line's own outputs: shell completions and the manual page.

use std::io::Write;
use std::process::{Command, Stdio};

fn ami(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_bash_completion_loads_and_knows_the_subcommands() {
    let script = ami(&["completions", "bash"]);
    assert!(script.contains("gateway") && script.contains("originate"));
    // bash sources it and then has a completion for `ami`.
    let mut bash = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p ami"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = bash.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("_ami"));
    for shell in ["zsh", "fish"] {
        assert!(ami(&["completions", shell]).contains("gateway"), "{shell}");
    }
}

#[test]
fn the_manual_page_is_roff_and_names_every_subcommand() {
    let page = ami(&["manpage"]);
    assert!(page.contains(".TH ami 1"), "{page}");
    for command in [
        "listen",
        "gateway",
        "calls",
        "originate",
        "send",
        "command",
        "decode",
        "demo",
    ] {
        assert!(page.contains(command), "{command}");
    }
}

/// `ami completions bash | grep -q ami` closes the pipe early: no panic, exit 0.
#[test]
fn a_reader_that_stops_early_is_no_error() {
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"],
        &["manpage"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args:?}: {:?} {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
