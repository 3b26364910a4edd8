//! `hone completions SHELL`: the shell's completion script for every subcommand and option,
//! generated from the same definitions the parser uses (clap_complete), printed to stdout.

use clap::{Args as ClapArgs, CommandFactory};
use clap_complete::Shell;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

pub fn run<Cli: CommandFactory>(args: Args) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(())
}
