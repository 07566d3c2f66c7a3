//! `modelpull`: the command-line front of the engine.

mod cli;
mod demo;
mod initializer;
mod output;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use modelpull::store::{self, Control, Env, Manifest};
use modelpull::{Context, Options, PullRequest};

use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    if let Some(code) = initializer::main_if_invoked() {
        return code;
    }
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal ends the process at once, as users expect from Ctrl-C twice.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, cancel.clone());
        let _ = signal_hook::flag::register(signal, cancel.clone());
    }
    let cx = Context {
        cancel,
        ..Context::default()
    };
    let (json, result) = match cli.command {
        Command::Pull(args) => (args.output.json, run_pull(args, &cx)),
        Command::Ls(args) => (args.json, run_ls(args, &cx)),
        Command::Demo(args) => (args.output.json, run_demo(args, &cx)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err
                .downcast_ref::<modelpull::Error>()
                .map_or(modelpull::ExitCode::Internal, modelpull::Error::exit_code);
            output::error(&err, code, json);
            ExitCode::from(code as u8)
        }
    }
}

/// Options from the flags plus what the environment adds (proxies).
fn options(engine: &cli::EngineArgs, env: &Env) -> anyhow::Result<Options> {
    let mut opts = engine.options();
    opts.proxy = env.proxy().map_err(modelpull::Error::InvalidOption)?;
    Ok(opts)
}

/// Lists every source; the manifests' TLS needs are added to `opts`.
fn resolve(
    sources: &[String],
    env: &Env,
    opts: &mut Options,
    quiet: bool,
    cx: &Context,
) -> anyhow::Result<Vec<Manifest>> {
    let control = Control::new(&opts.client())?.with_cancel(cx.cancel.clone());
    let mut manifests = Vec::new();
    for uri in sources {
        if !quiet {
            eprintln!("modelpull: listing {}", modelpull::redact_str(uri));
        }
        let m = store::resolve(uri, env, &control)?;
        opts.apply_tls(&m);
        manifests.push(m);
    }
    Ok(manifests)
}

fn run_ls(args: cli::LsArgs, cx: &Context) -> anyhow::Result<()> {
    let env = Env::from_process();
    let mut opts = options(&args.engine, &env)?;
    let manifests = resolve(&args.sources, &env, &mut opts, true, cx)?;
    output::listing(&manifests, args.json);
    Ok(())
}

fn run_pull(args: cli::PullArgs, cx: &Context) -> anyhow::Result<()> {
    let env = Env::from_process();
    let mut opts = options(&args.engine, &env)?;
    // On a terminal, say what is being listed (a big bucket takes a moment); scripts get
    // nothing but the result or the one-line error.
    let quiet = args.output.json
        || args.output.no_progress
        || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let manifests = resolve(&args.sources, &env, &mut opts, quiet, cx)?;
    let targets = manifests.into_iter().flat_map(|m| m.files).collect();
    let request = PullRequest {
        targets,
        dest: args.dest,
        unpack: !args.keep_archive,
        sources: args
            .sources
            .iter()
            .map(|s| modelpull::redact_str(s))
            .collect(),
    };
    let bar = output::ProgressBar::start(
        cx.progress.clone(),
        !args.output.json && !args.output.no_progress,
    );
    let result = modelpull::pull(&request, &opts, cx);
    bar.finish();
    output::report(&result?, args.output.json);
    Ok(())
}

fn run_demo(args: cli::DemoArgs, cx: &Context) -> anyhow::Result<()> {
    let opts = args.engine.options();
    let demo = demo::DemoOptions {
        size: args.size,
        shards: args.shards,
        base_dir: args.dir,
        keep: args.keep,
    };
    let json = args.output.json;
    let mut bar = None;
    let outcome = demo::run(&demo, &opts, cx, &mut |stage| {
        if !json {
            eprintln!("modelpull demo: {stage}");
        }
        if stage.starts_with("pulling") {
            bar = Some(output::ProgressBar::start(
                cx.progress.clone(),
                !json && !args.output.no_progress,
            ));
        }
    });
    if let Some(bar) = bar {
        bar.finish();
    }
    let outcome = outcome?;
    output::report(&outcome.report, json);
    if !json {
        if let Some(path) = &outcome.kept {
            eprintln!("modelpull demo: the model is kept in {}", path.display());
        } else {
            eprintln!("modelpull demo: verified every file; temporary files removed");
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
