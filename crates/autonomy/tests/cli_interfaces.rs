//! The interfaces an operator's tooling expects from the binary (issue 15, SPEC §10): shell
//! completions and man pages generated from the clap definitions.

mod common;

use std::process::Command;

use common::{run, run_bounded, OutputExt, TestDir, CLI_LIMIT};

/// Runs `bash -c SCRIPT` with `autonomy` (the binary under test) sourced from its completions.
fn bash_with_completions(dir: &TestDir, script: &str) -> std::process::Output {
    let out = run(&["completions", "bash"], &[], None);
    out.assert_code(0);
    let file = dir.path().join("autonomy.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("--norc")
        .arg("-c")
        .arg(format!("source {} && {script}", file.display()));
    run_bounded(cmd, None, CLI_LIMIT)
}

#[test]
fn bash_completion_loads_and_completes_commands_and_flags() {
    let dir = TestDir::new("completions");
    let out = bash_with_completions(&dir, "complete -p autonomy");
    out.assert_code(0);
    assert!(
        out.stdout_str().contains("-F _autonomy autonomy"),
        "{}",
        out.stdout_str()
    );

    // What TAB offers after `autonomy rollout ` and after `autonomy audit query --`.
    let complete = |words: &str| {
        let script = format!(
            "COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _autonomy autonomy \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = bash_with_completions(&dir, &script);
        out.assert_code(0);
        out.stdout_str()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let verbs = complete("autonomy rollout ''");
    for verb in ["create", "list", "stuck", "devices"] {
        assert!(verbs.iter().any(|v| v == verb), "{verb} not in {verbs:?}");
    }
    let flags = complete("autonomy audit query --");
    for flag in ["--event-type", "--audit-dir", "--server", "--output"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} not in {flags:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_the_commands() {
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell], &[], None);
        out.assert_code(0);
        let script = out.stdout_str();
        for word in ["rollout", "audit", "server", "audit-dir", "event-type"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = run(&["completions", "tcsh"], &[], None);
    out.assert_code(2);
    // A local verb takes no client flag after it.
    run(&["completions", "bash", "--server", "x:1"], &[], None).assert_code(2);
}

#[test]
fn man_page_renders_with_name_synopsis_and_every_command() {
    let out = run(&["man"], &[], None);
    out.assert_code(0);
    let page = out.stdout_str();
    assert!(
        page.starts_with(".ie") || page.contains(".TH autonomy 1"),
        "{page}"
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH SUBCOMMANDS",
    ] {
        assert!(page.contains(section), "no {section}:\n{page}");
    }
    for verb in ["serve", "rollout", "audit", "completions"] {
        assert!(page.contains(&format!("autonomy\\-{verb}(1)")), "no {verb}");
    }

    // `man -l` renders it, when man is installed (it is on CI's machine).
    if Command::new("man").arg("--version").output().is_ok() {
        let dir = TestDir::new("man-render");
        let file = dir.path().join("autonomy.1");
        std::fs::write(&file, page.as_bytes()).unwrap();
        let mut cmd = Command::new("man");
        cmd.arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("COLUMNS", "100");
        let shown = run_bounded(cmd, None, CLI_LIMIT);
        shown.assert_code(0);
        let text = shown.stdout_str();
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    }

    // --out-dir: one page per command, each with its own synopsis.
    let dir = TestDir::new("man-pages");
    let out_dir = dir.path().join("man1");
    let out = run(&["man", "--out-dir", out_dir.to_str().unwrap()], &[], None);
    out.assert_code(0);
    assert_eq!(out.stdout_str(), "");
    for name in [
        "autonomy.1",
        "autonomy-serve.1",
        "autonomy-rollout-create.1",
        "autonomy-audit-query.1",
    ] {
        let page =
            std::fs::read_to_string(out_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(page.contains(".SH SYNOPSIS"), "{name}");
    }
    let page = std::fs::read_to_string(out_dir.join("autonomy-audit-query.1")).unwrap();
    assert!(page.contains("\\-\\-audit\\-dir"), "{page}");
}
