//! `modelpull`: the command-line front of the engine.

mod cli;
mod demo;
mod dest;
mod initializer;
mod output;
mod progress;
mod select;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{CommandFactory, Parser};
use modelpull::store::{self, Control, Env, Manifest};
use modelpull::{Context, HfCache, Options, Patterns, PullRequest};

use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    if let Some(code) = initializer::main_if_invoked() {
        return code;
    }
    let cli = Cli::parse();
    let quiet = match &cli.command {
        Command::Pull(args) => args.output.quiet,
        Command::Demo(args) => args.output.quiet,
        Command::Ls(_) | Command::Completions(_) => false,
    };
    init_logging(cli.log_format, cli.verbose, quiet);
    let cancel = cancel_on_signals(130);
    let cx = Context {
        cancel,
        ..Context::default()
    };
    let (json, result) = match cli.command {
        Command::Pull(args) => (args.output.json, run_pull(args, &cx)),
        Command::Ls(args) => (args.json, run_ls(args, &cx)),
        Command::Demo(args) => (args.output.json, run_demo(args, &cx)),
        Command::Completions(args) => (false, completions(args.shell)),
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

/// SIGINT and SIGTERM stop a pull at a chunk boundary (it resumes when run again); a second
/// signal ends the process at once with `exit`, as users expect from Ctrl-C twice.
fn cancel_on_signals(exit: i32) -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, exit, cancel.clone());
        let _ = signal_hook::flag::register(signal, cancel.clone());
    }
    cancel
}

/// Options from the flags plus what the environment adds (proxies).
fn options(engine: &cli::EngineArgs, env: &Env) -> anyhow::Result<Options> {
    let mut opts = engine.options();
    opts.proxy = env.proxy().map_err(modelpull::Error::InvalidOption)?;
    if let Some(path) = &engine.proxy_ca_bundle {
        let bundle = modelpull::CaBundle::from(path.as_path());
        bundle
            .certificates()
            .map_err(|e| modelpull::Error::InvalidOption(format!("--proxy-ca-bundle: {e}")))?;
        if !opts.trust_proxy_ca(bundle) {
            tracing::warn!(
                bundle = %path.display(),
                "--proxy-ca-bundle is unused: no proxy is configured (HTTPS_PROXY)"
            );
        }
    }
    Ok(opts)
}

/// Lists every source, keeping the files `patterns` select; the manifests' TLS needs are
/// added to `opts`.
fn resolve(
    sources: &[String],
    env: &Env,
    opts: &mut Options,
    patterns: &Patterns,
    quiet: bool,
    cx: &Context,
) -> anyhow::Result<Vec<Manifest>> {
    let control = Control::new(&opts.client())?.with_cancel(cx.cancel.clone());
    let mut manifests = Vec::new();
    for uri in sources {
        if !quiet {
            eprintln!("modelpull: listing {}", modelpull::redact_str(uri));
        }
        let m = store::resolve_filtered(uri, env, &control, patterns)?;
        opts.apply_tls(&m);
        manifests.push(m);
    }
    Ok(manifests)
}

fn run_ls(args: cli::LsArgs, cx: &Context) -> anyhow::Result<()> {
    let env = Env::from_process();
    let mut opts = options(&args.engine, &env)?;
    let sources = select::sources(&args.sources, args.select.revision.as_deref())?;
    let patterns = select::patterns(&args.select, &env);
    let manifests = resolve(&sources, &env, &mut opts, &patterns, true, cx)?;
    output::listing(&manifests, args.json);
    Ok(())
}

fn run_pull(mut args: cli::PullArgs, cx: &Context) -> anyhow::Result<()> {
    let dest = args
        .destination()
        .map_err(modelpull::Error::InvalidOption)?;
    if args.adopt && matches!(dest, dest::Destination::HfCache) {
        return Err(modelpull::Error::InvalidOption(
            "--adopt takes over a model folder: give DEST or --local-dir (the Hugging Face cache reuses the blobs it has without it)".into(),
        )
        .into());
    }
    // Checked here rather than by clap, whose error would echo a URL's user info.
    let mirrors = args
        .mirror
        .iter()
        .map(|m| modelpull::mirror::parse_base(m))
        .collect::<modelpull::Result<Vec<_>>>()?;
    let env = Env::from_process();
    let mut opts = options(&args.engine, &env)?;
    let sources = select::sources(&args.sources, args.select.revision.as_deref())?;
    let patterns = select::patterns(&args.select, &env);
    // On a terminal, say what is being listed (a big bucket takes a moment) and show progress;
    // scripts get nothing but the result or the one-line error.
    let chatty = !(args.output.json || args.output.no_progress || args.output.quiet)
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let manifests = resolve(&sources, &env, &mut opts, &patterns, !chatty, cx)?;
    let dest = match dest {
        dest::Destination::Dir(dir) => dir,
        dest::Destination::HfCache => {
            let mut manifest = manifests.into_iter().next().expect("one hf:// source");
            for t in &mut manifest.files {
                t.add_mirrors(&mirrors);
            }
            return pull_to_cache(&manifest, &env, &opts, &args.output, chatty, cx);
        }
    };
    let mut targets: Vec<_> = manifests.into_iter().flat_map(|m| m.files).collect();
    for t in &mut targets {
        t.add_mirrors(&mirrors);
    }
    let request = PullRequest {
        targets,
        dest,
        unpack: !args.keep_archive,
        adopt: args.adopt,
        sources: sources.iter().map(|s| modelpull::redact_str(s)).collect(),
    };
    let display = progress::Display::start(cx.progress.clone(), chatty);
    let result = modelpull::pull(&request, &opts, cx);
    display.finish();
    output::pulled(&result?, args.output.json, args.output.quiet);
    Ok(())
}

/// `pull` without DEST: the model goes to the Hugging Face cache.
fn pull_to_cache(
    manifest: &Manifest,
    env: &Env,
    opts: &Options,
    shown: &cli::OutputArgs,
    chatty: bool,
    cx: &Context,
) -> anyhow::Result<()> {
    let cache = HfCache::from_env(env)?;
    let display = progress::Display::start(cx.progress.clone(), chatty);
    let result = cache.pull(manifest, opts, cx);
    display.finish();
    output::pulled(&result?, shown.json, shown.quiet);
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
    let chatty = !json && !args.output.quiet;
    let mut display = None;
    let outcome = demo::run(&demo, &opts, cx, &mut |stage| {
        if chatty {
            eprintln!("modelpull demo: {stage}");
        }
        if stage.starts_with("pulling") {
            display = Some(progress::Display::start(
                cx.progress.clone(),
                chatty && !args.output.no_progress,
            ));
        }
    });
    if let Some(display) = display {
        display.finish();
    }
    let outcome = outcome?;
    output::report(&outcome.report, json);
    if chatty {
        if let Some(path) = &outcome.kept {
            eprintln!("modelpull demo: the model is kept in {}", path.display());
        } else {
            eprintln!("modelpull demo: verified every file; temporary files removed");
        }
    }
    Ok(())
}

/// `modelpull completions SHELL`: clap's completion script for this very command line.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "modelpull",
        &mut std::io::stdout(),
    );
    Ok(())
}

/// Logs on stderr: warnings by default, errors only with `--quiet`, more with `-v`; `RUST_LOG`
/// overrides.
fn init_logging(format: LogFormat, verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
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
