//! The `tribe` command: run an agent, drive one through its admin API, or
//! watch a local demo tribe.

use clap::{Parser, Subcommand};

mod agent;
mod cli;
mod client;
mod demo;
mod log_writer;
mod output;
mod signals;
mod tasks;

use cli::{AdminCommand, AdminOpts, FactCmd, KeysCmd, PluginCmd, PolicyCmd, TaskCmd, TribeCmd};

#[derive(Parser)]
#[command(
    name = "tribe",
    version,
    about = "Tribes for monitoring agents: gossip membership, facts, policies and per-tribe catalogs",
    long_about = "Tribes for monitoring agents: gossip membership, facts, policies and per-tribe catalogs.\n\n\
        `tribe agent` runs a node with an admin HTTP API; the other commands talk to that API \
        (--admin, default 127.0.0.1:7947, or TRIBE_ADMIN). `tribe demo` starts a local tribe of \
        agent processes and narrates what happens."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: join the tribe, serve the admin API, leave on SIGINT/SIGTERM.
    Agent(Box<agent::AgentArgs>),
    /// Start a local tribe of agent processes on 127.0.0.1 and narrate what happens.
    Demo(demo::DemoArgs),
    /// Show the agent's name, address, live member count and state digest.
    Status(AdminOpts),
    /// List the members the agent knows, with state, tribes and facts (FACTS: those
    /// under names no collected fact has, and those a policy names; --json: all).
    Members(AdminOpts),
    /// List tribes with their live members, plugins and tasks.
    Tribes(AdminOpts),
    /// Show, create, delete a tribe; put a node in or take it out by hand.
    Tribe {
        #[command(subcommand)]
        cmd: TribeCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Add, remove or list policies (CEL over facts) that place nodes in tribes.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Load or unload a plugin in a tribe's catalog.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Add, remove, start or stop a tribe's tasks.
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// List the agent's facts, or set and remove its user facts.
    Fact {
        #[command(subcommand)]
        cmd: FactCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// List, install, use or remove encryption keys across the tribe; set the encryption mode.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Join the agent to a running tribe through ADDR (HOST:PORT of any of its
    /// nodes; several are tried together), also to merge two tribes.
    Join {
        /// HOST:PORT of a node (an address or a name).
        #[arg(required = true, value_name = "ADDR")]
        addrs: Vec<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Print a new random 32-byte encryption key in base64.
    Keygen,
}

/// An empty `TRIBE_*` variable counts as unset, as when a unit file or a
/// shell clears one with `VAR=` (clap would refuse `""` as a value). Runs
/// first in `main`, while the process has one thread.
fn unset_empty_tribe_variables() {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(k, v)| v.is_empty() && k.to_str().is_some_and(|k| k.starts_with("TRIBE_")))
        .map(|(k, _)| k)
        .collect();
    for key in empty {
        std::env::remove_var(key);
    }
}

fn main() -> std::process::ExitCode {
    unset_empty_tribe_variables();
    // A write past the file-size limit (`ulimit -f`: the data dir, the file
    // publisher, a log file) then fails with EFBIG, counted and retried
    // like any failed write, instead of SIGXFSZ killing the process with no
    // goodbye. (The library sets no signal disposition: this is the
    // command's own process.)
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = match cli.command {
        Command::Agent(args) => agent::run(*args),
        Command::Demo(args) => demo::run(args),
        Command::Status(opts) => cli::run(opts, AdminCommand::Status),
        Command::Members(opts) => cli::run(opts, AdminCommand::Members),
        Command::Tribes(opts) => cli::run(opts, AdminCommand::Tribes),
        Command::Tribe { cmd, opts } => cli::run(opts, AdminCommand::Tribe(cmd)),
        Command::Policy { cmd, opts } => cli::run(opts, AdminCommand::Policy(cmd)),
        Command::Plugin { cmd, opts } => cli::run(opts, AdminCommand::Plugin(cmd)),
        Command::Task { cmd, opts } => cli::run(opts, AdminCommand::Task(cmd)),
        Command::Fact { cmd, opts } => cli::run(opts, AdminCommand::Fact(cmd)),
        Command::Join { addrs, opts } => cli::run(opts, AdminCommand::Join(addrs)),
        Command::Keys { cmd, opts } => cli::run(opts, AdminCommand::Keys(cmd)),
        Command::Keygen => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", tribe::SecretKey::generate().to_base64())
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing to stdout: {e}"))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e == agent::LOGGED => std::process::ExitCode::FAILURE,
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn an error into a
            // panic.
            // A key given under the wrong option is not quoted back.
            let e = tribe::keyfile::withhold_keys(&e);
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("tribe: {e}\n"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints clap's message for `e` (usage error, `--help`, `--version`) as
/// clap would, but with any key in it withheld: `--encryption "$KEY"`
/// would otherwise quote the key into a service manager's log.
fn usage_error(e: &clap::Error) -> std::process::ExitCode {
    use std::io::Write as _;
    let text = e.render().to_string();
    let text = tribe::keyfile::withhold_keys(&text);
    // Not eprintln!/println!: a closed stream must not turn this into a panic.
    let _ = if e.use_stderr() {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        std::io::stdout().write_all(text.as_bytes())
    };
    std::process::ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}
