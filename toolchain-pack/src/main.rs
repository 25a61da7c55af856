//! `distcc-rs-pack`: create, inspect and unpack toolchain bundles by hand.
//! The client and the node use the library directly; this binary is for
//! people preparing, debugging or pre-seeding a farm.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use distcc_rs_pack::{BundleManifest, PackOptions};
use distcc_rs_proto::ToolchainId;

/// Builds, inspects and unpacks hermetic rustc toolchain bundles.
///
/// A bundle is a reproducible .tar.zst holding rustc, its driver and LLVM
/// libraries, the host target's standard library and the system libraries
/// and dynamic loader they need, so that a machine without Rust can run it.
/// Bundles are named by the BLAKE3 hash of their uncompressed tar stream.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a local toolchain into <OUT>/<ID>.tar.zst.
    Create {
        /// The rustc whose toolchain to pack; rustup proxies are resolved by
        /// asking rustc for its sysroot.
        #[arg(long, env = "RUSTC", default_value = "rustc")]
        rustc: PathBuf,
        /// Directory to write the bundle into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// zstd compression level (1-22). 3 takes seconds; 19 is about 20%
        /// smaller and takes minutes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Compression threads; 0 uses every core. The output bytes do not
        /// depend on this.
        #[arg(long, default_value_t = 0)]
        threads: u32,
    },
    /// Verify a bundle's hash and print a summary of its manifest.
    ///
    /// The expected id is the file name without `.tar.zst`. If the name is
    /// not an id, the computed id is printed instead.
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
    },
    /// Verify a bundle and unpack it into a new directory.
    Unpack {
        /// The bundle file.
        bundle: PathBuf,
        /// Directory to create; it must not exist yet.
        dest: PathBuf,
        /// Expected bundle id; defaults to the file name without `.tar.zst`.
        #[arg(long)]
        id: Option<ToolchainId>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distcc-rs-pack: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Joins the error chain into one line. The library's messages already end
/// with their cause (so that they read well when logged alone), so a cause
/// that the message before it already ends with is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if line.ends_with(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create {
            rustc,
            out,
            level,
            threads,
        } => create(&rustc, &out, PackOptions { level, threads }),
        Command::Inspect { bundle } => inspect(&bundle),
        Command::Unpack { bundle, dest, id } => unpack(&bundle, &dest, id),
    }
}

fn create(rustc: &Path, out: &Path, opts: PackOptions) -> Result<()> {
    let started = Instant::now();
    let info = distcc_rs_pack::detect(rustc)
        .with_context(|| format!("asking {} about its toolchain", rustc.display()))?;
    let bundle = distcc_rs_pack::create(&info, &opts, out)
        .with_context(|| format!("packing the toolchain at {}", info.sysroot.display()))?;
    let elapsed = started.elapsed();
    let raw = bundle.manifest.total_size();
    println!("id:         {}", bundle.id);
    println!("path:       {}", bundle.path.display());
    println!("toolchain:  {}", bundle.manifest.version_line());
    println!("files:      {}", bundle.manifest.files.len());
    println!("raw size:   {}", mib(raw));
    println!(
        "compressed: {} ({:.1}%)",
        mib(bundle.compressed_size),
        100.0 * bundle.compressed_size as f64 / raw.max(1) as f64
    );
    println!("time:       {:.2} s", elapsed.as_secs_f64());
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let context = || format!("verifying {}", path.display());
    match id_from_name(path) {
        Some(id) => {
            let manifest = distcc_rs_pack::verify_file(path, id).with_context(context)?;
            print_summary(&manifest);
            println!("id:        {id} (verified)");
        }
        None => {
            let (manifest, id) = distcc_rs_pack::identify_file(path).with_context(context)?;
            print_summary(&manifest);
            println!("id:        {id} (computed; the file name is not an id)");
        }
    }
    Ok(())
}

fn print_summary(m: &BundleManifest) {
    println!("toolchain: {}", m.version_line());
    println!("host:      {}", m.host);
    println!("format:    {}", m.format);
    println!(
        "start:     {} --library-path {} {}",
        if m.interpreter.is_empty() {
            "(none)"
        } else {
            &m.interpreter
        },
        m.library_path.join(":"),
        m.rustc
    );
    println!("files:     {}", m.files.len());
    println!("size:      {}", mib(m.total_size()));
}

fn unpack(bundle: &Path, dest: &Path, id: Option<ToolchainId>) -> Result<()> {
    let Some(id) = id.or_else(|| id_from_name(bundle)) else {
        bail!(
            "{} is not named <id>.tar.zst; pass the expected id with --id",
            bundle.display()
        );
    };
    let started = Instant::now();
    let file = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let manifest = distcc_rs_pack::unpack(file, dest, id)
        .with_context(|| format!("unpacking {} into {}", bundle.display(), dest.display()))?;
    print_summary(&manifest);
    println!(
        "unpacked:  {} in {:.2} s",
        dest.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The id a bundle file is named by, `<64 hex digits>.tar.zst`.
fn id_from_name(path: &Path) -> Option<ToolchainId> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".tar.zst")?.parse().ok()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
