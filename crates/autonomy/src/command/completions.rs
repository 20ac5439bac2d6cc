//! `autonomy completions SHELL` and `autonomy man`: generated from the same clap definitions
//! as the parser ([`crate::cli::command`]), so they cannot drift from the flags.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

/// Print a shell completion script to stdout
///
/// Install (bash): `autonomy completions bash > ~/.local/share/bash-completion/completions/autonomy`
/// (or `source <(autonomy completions bash)` in ~/.bashrc);
/// zsh: `autonomy completions zsh > "${fpath[1]}/_autonomy"`;
/// fish: `autonomy completions fish > ~/.config/fish/completions/autonomy.fish`.
///
/// Examples:
///   autonomy completions bash > /etc/bash_completion.d/autonomy
///   source <(autonomy completions bash)
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh or fish (also elvish, powershell).
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

impl CompletionsArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut cmd = crate::cli::command();
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut cmd, "autonomy", &mut script);
        write_stdout(&script)
    }
}

/// Print the man page (roff) to stdout, or write one page per command to a directory
///
/// Without --out-dir: the page of `autonomy` itself (`man autonomy`), on stdout. With
/// --out-dir DIR: `autonomy.1` and one page per command (`autonomy-rollout-create.1`, …).
///
/// Examples:
///   autonomy man | man -l -
///   autonomy man --out-dir /usr/local/share/man/man1 && mandb
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ManArgs {
    /// Write every page (`autonomy.1`, `autonomy-<command>.1`, …) into this directory
    /// (created if missing) instead of printing the root page.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

impl ManArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let cmd = crate::cli::command();
        match self.out_dir {
            None => {
                let mut page = Vec::new();
                clap_mangen::Man::new(cmd).render(&mut page)?;
                write_stdout(&page)
            }
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                clap_mangen::generate_to(cmd, &dir)
                    .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
