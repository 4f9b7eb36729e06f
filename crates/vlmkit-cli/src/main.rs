//! `vlmkit`: train, run and compare vision-language models.

mod commands;
mod common;

use clap::{Parser, Subcommand};

// Links the one shared library the binary and plugins share (std, candle, the
// plugin API): without a use in code, rustc would link none of it dynamically.
use vlmkit_api as _;

/// Train, run and compare vision-language models whose connector you can swap.
#[derive(Debug, Parser)]
#[command(name = "vlmkit", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Load a connector plugin (a shared library built against this vlmkit; see
    /// docs/writing-a-connector.md). Loading a library runs its code. Repeatable.
    #[arg(long = "plugin", value_name = "LIB", global = true)]
    plugins: Vec<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a recipe (resumes when its run directory holds a checkpoint).
    Train(commands::train::TrainArgs),
    /// Score a trained model on its recipe's eval split, per question family.
    Eval(commands::eval::EvalArgs),
    /// Answer a question about an image with a trained model.
    Infer(commands::infer::InferArgs),
    /// Score a published benchmark from an answers file, as its official script does.
    Score(commands::score::ScoreArgs),
    /// Write a trained model in another toolkit's format (transformers' LLaVA).
    Export(commands::export::ExportArgs),
    /// Work with recipes.
    Recipe(commands::recipe::RecipeArgs),
    /// Work with the built-in data.
    Data(commands::data::DataArgs),
    /// Region masks for a LLaVA JSON file from Segment Anything, prompted by its boxes or points.
    Masks(commands::masks::MasksArgs),
    /// Count parameters per component, trainable or frozen.
    Params(commands::params::ParamsArgs),
    /// Time the phases of a training step (median data / forward / backward / optimizer).
    Bench(commands::bench::BenchArgs),
    /// Work with connectors on their own (parity runs against a reference).
    Connector(commands::connector::ConnectorArgs),
    /// Inspect a Hugging Face checkpoint, or run it on inputs from a file.
    Model(commands::model::ModelArgs),
    /// Train and evaluate recipes over seeds and report them side by side.
    Compare(commands::compare::CompareArgs),
    /// Train and evaluate one recipe over a grid of settings and seeds, and report.
    Sweep(commands::sweep::SweepArgs),
    /// List the connectors this vlmkit knows, or inspect a plugin library.
    Plugins(commands::plugins::PluginsArgs),
    /// Start something new from a template (a connector plugin crate).
    New(commands::new::NewArgs),
}

fn main() -> std::process::ExitCode {
    // Training allocates and frees many large activation buffers per step; glibc
    // hands them back to the kernel (page faults and TLB shootdowns on every
    // reuse), mimalloc keeps them. It replaces malloc itself (`override`): with std
    // linked dynamically, a `#[global_allocator]` would be bypassed. This call
    // keeps its object in the link and tells it to keep freed pages.
    common::configure_allocator();
    let cli = Cli::parse();
    common::single_threaded_ops();
    common::set_command_line_plugins(cli.plugins);
    let result = match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Infer(args) => commands::infer::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Recipe(args) => commands::recipe::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Masks(args) => commands::masks::run(args),
        Command::Params(args) => commands::params::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Connector(args) => commands::connector::run(args),
        Command::Model(args) => commands::model::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Sweep(args) => commands::sweep::run(args),
        Command::Plugins(args) => commands::plugins::run(args),
        Command::New(args) => commands::new::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            common::report_error(&err);
            std::process::ExitCode::FAILURE
        }
    }
}
