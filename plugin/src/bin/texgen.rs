//! `texgen`: the command-line face of bevy_diffusion's core.
//!
//! - `texgen generate --prompt "mossy cobblestone" --out wall.png` runs one request on the
//!   embedded default model (or `--model DIR`, any diffusers-layout SD folder).
//! - `texgen bake textures.ron --out assets/textures` bakes a manifest of named requests,
//!   regenerating only what changed ([`bevy_diffusion::bake`]).
//! - `texgen inspect DIR` describes a model folder and lists every problem with it
//!   ([`bevy_diffusion::inspect`]).
//!
//! With the `hf-hub` feature, `--model` also takes a Hugging Face repo id
//! ([`bevy_diffusion::hub`]). Errors end the process with a non-zero exit code and one line on
//! stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bevy_diffusion::bake::{BakeEvent, BakeManifest, BakeOptions, ItemOutcome, ItemState};
use bevy_diffusion::hub::{HubOptions, resolve_model};
use bevy_diffusion::inspect::{InspectOptions, inspect};
use bevy_diffusion::noise::SeededNoise;
use bevy_diffusion::pipeline::{self, DenoisingStep, ExplicitNoise, GenerationHooks};
use bevy_diffusion::request::{AssetKind, InitImage, PixelArt};
use bevy_diffusion::schedulers::TimestepSpacing;
use bevy_diffusion::{GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion, Tiling};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "texgen",
    version,
    about = "Generate game textures and sprites with Stable-Diffusion-family models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum Command {
    /// Generate one image from a prompt.
    Generate(GenerateArgs),
    /// Bake a RON manifest of named requests into NAME.png + NAME.texgen.json, skipping items
    /// that are up to date.
    Bake(BakeArgs),
    /// Describe a model folder (family, components, scheduler, tokenizer) and list every problem.
    Inspect(InspectArgs),
}

/// Where the model comes from.
#[derive(Args)]
struct ModelArgs {
    /// Model folder in the diffusers layout (default: the embedded model in
    /// assets/models/default). With the `hf-hub` feature also a Hugging Face repo id
    /// (`owner/name[@revision]`), downloaded once into the Hub cache.
    #[arg(long)]
    model: Option<String>,
    /// Hugging Face cache folder for downloaded models (default: $HF_HOME/hub or
    /// ~/.cache/huggingface/hub).
    #[arg(long)]
    hf_cache: Option<PathBuf>,
}

impl ModelArgs {
    fn hub(&self) -> HubOptions {
        HubOptions {
            cache_dir: self.hf_cache.clone(),
            ..HubOptions::default()
        }
    }

    /// The model folder: `--model` (relative to the current folder), else `fallback`, else the
    /// default model.
    fn resolve(&self, fallback: Option<(&str, &Path)>) -> Result<PathBuf> {
        let (spec, base) = match (&self.model, fallback) {
            (Some(m), _) => (m.as_str(), Path::new(".")),
            (None, Some((m, base))) => (m, base),
            (None, None) => return Ok(bevy_diffusion::embedded::default_model_dir()),
        };
        let dir = resolve_model(spec, base, &self.hub())?;
        Ok(dir.strip_prefix("./").map(Path::to_path_buf).unwrap_or(dir))
    }
}

#[derive(Args)]
struct BakeArgs {
    /// The manifest: `(model: None, items: { "wall": (prompt: "mossy stone wall", seed: 3,
    /// tiling: xy), ... })`.
    manifest: PathBuf,
    /// Output folder for NAME.png and NAME.texgen.json.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Regenerate every item, even those that are up to date.
    #[arg(long)]
    force: bool,
    /// CPU threads for tensor maths (default: 1 for small models such as the embedded one, else
    /// all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct InspectArgs {
    /// The model folder (with the `hf-hub` feature also a repo id).
    dir: String,
    /// Report weight files larger than this many bytes as a problem.
    #[arg(long, default_value_t = bevy_diffusion::model_folder::DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Describe the fp16 weight variants when both exist.
    #[arg(long)]
    fp16: bool,
    /// Also load every weight (StableDiffusion::load) after the checks; slow on real models.
    #[arg(long)]
    load: bool,
    /// Hugging Face cache folder (for a repo id).
    #[arg(long)]
    hf_cache: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// What to draw.
    #[arg(long, default_value = "")]
    prompt: String,
    /// What to avoid (classifier-free guidance's unconditional prompt).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seed of the noise stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps (num_inference_steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale (guidance is off at <= 1).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// ddim | euler | euler-a | dpmpp-2m | dpmpp-2m-karras | lcm (default: the folder's scheduler).
    #[arg(long)]
    scheduler: Option<String>,
    /// leading | linspace | trailing (overrides the folder's scheduler config).
    #[arg(long)]
    timestep_spacing: Option<String>,
    /// Output width in pixels, a multiple of 8 (default: the model's native size).
    #[arg(long, default_value_t = 0)]
    width: u32,
    /// Output height in pixels, a multiple of 8 (default: the model's native size).
    #[arg(long, default_value_t = 0)]
    height: u32,
    /// Seamless tiling: none | x | y | xy.
    #[arg(long, default_value = "none")]
    tiling: String,
    /// img2img: start from this image.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// img2img strength in (0, 1].
    #[arg(long, default_value_t = 0.8)]
    strength: f64,
    /// A safetensors file with a tensor `noise` [1, C, H/8, W/8] used instead of the seed's
    /// initial latents (img2img: the add_noise noise), and optionally `vae_sample_eps`.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// texture | sprite (sprites get a transparent background).
    #[arg(long, default_value = "texture")]
    kind: String,
    /// Pixel-art pass: CELLxCOLORS, e.g. 2x16 (2-pixel blocks, 16-colour palette).
    #[arg(long)]
    pixel_art: Option<String>,
    /// CPU threads for tensor maths (default: 1 for small models such as the embedded one, else
    /// all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to write the PNG.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("texgen: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause its parent's message already
/// includes (thiserror messages often embed their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Bake(args) => bake(args),
        Command::Inspect(args) => inspect_folder(args),
    }
}

/// Prints one line per denoising step.
struct StepPrinter;
impl GenerationHooks for StepPrinter {
    fn on_step(&mut self, step: &DenoisingStep) {
        eprintln!(
            "step {}/{} (t = {})",
            step.step + 1,
            step.total,
            step.timestep
        );
    }
}

fn generate(args: GenerateArgs) -> Result<()> {
    let scheduler = args
        .scheduler
        .as_deref()
        .map(str::parse::<SchedulerKind>)
        .transpose()?;
    let timestep_spacing = args
        .timestep_spacing
        .as_deref()
        .map(str::parse::<TimestepSpacing>)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let tiling: Tiling = args.tiling.parse().map_err(anyhow::Error::msg)?;
    if args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.eq_ignore_ascii_case("png"))
        != Some(true)
    {
        bail!(
            "--out {}: the output must be a .png file",
            args.out.display()
        );
    }
    let request = GenerationRequest {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        seed: args.seed,
        width: args.width,
        height: args.height,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        scheduler,
        timestep_spacing,
        tiling,
        init_image: args.init_image.map(InitImage::Path),
        strength: args.strength,
        kind: parse_kind(&args.kind)?,
        pixel_art: args.pixel_art.as_deref().map(parse_pixel_art).transpose()?,
        ..Default::default()
    };
    // Fail fast on what does not need the model (the size's multiple is checked after loading).
    request.validate(1)?;
    if let Some(InitImage::Path(p)) = &request.init_image
        && !p.is_file()
    {
        bail!("--init-image {}: no such file", p.display());
    }
    let model_dir = args.model.resolve(None)?;
    let started = Instant::now();
    let model = StableDiffusion::load(&model_dir, &LoadOptions::default())?;
    eprintln!(
        "loaded {} in {:.2} s",
        model_dir.display(),
        started.elapsed().as_secs_f64()
    );
    let explicit = match &args.noise {
        Some(path) => read_noise_file(path)?,
        None => ExplicitNoise::default(),
    };
    let started = Instant::now();
    let mut noise = SeededNoise::new(request.seed);
    let out = model.run_with_threads(capped_threads(args.threads), || {
        pipeline::generate_with_noise(&model, &request, &explicit, &mut noise, &mut StepPrinter)
    })?;
    if out.prompt_truncated {
        eprintln!("note: the prompt was longer than 77 tokens and was truncated");
    }
    let image = bevy_diffusion::postprocess::finish(out.image, &request);
    write_png(&image, &args.out)?;
    eprintln!(
        "wrote {} ({}x{}, seed {}) in {:.2} s",
        args.out.display(),
        image.width(),
        image.height(),
        out.seed,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn parse_kind(s: &str) -> Result<AssetKind> {
    // Any case: `sprite`, `Sprite`, `SPRITE`.
    match s.to_ascii_lowercase().as_str() {
        "texture" => Ok(AssetKind::Texture),
        "sprite" => Ok(AssetKind::Sprite),
        _ => bail!("--kind {s}: expected texture or sprite"),
    }
}

fn parse_pixel_art(s: &str) -> Result<PixelArt> {
    let parsed = s.split_once('x').and_then(|(c, n)| {
        Some(PixelArt {
            cell: c.parse().ok()?,
            colors: n.parse().ok()?,
        })
    });
    parsed.with_context(|| format!("--pixel-art {s}: expected CELLxCOLORS, e.g. 2x16"))
}

/// Reads `noise` (and optional `vae_sample_eps`) from a safetensors file.
fn read_noise_file(path: &std::path::Path) -> Result<ExplicitNoise> {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("--noise {}", path.display()))?;
    let Some(noise) = tensors.get("noise") else {
        bail!(
            "--noise {}: no tensor named `noise` in the file",
            path.display()
        );
    };
    Ok(ExplicitNoise {
        noise: Some(noise.clone()),
        vae_sample_eps: tensors.get("vae_sample_eps").cloned(),
    })
}

/// Writes a PNG atomically: to a temporary file beside `path`, then renamed over it.
fn write_png(image: &image::RgbaImage, path: &std::path::Path) -> Result<()> {
    bevy_diffusion::cache::write_png_atomic(image, path)
        .with_context(|| format!("--out {}", path.display()))
}

/// Prints a status line above the progress bar (or plainly when the bar is hidden, e.g. when
/// stderr is not a terminal: indicatif then drops `println`).
fn status(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn bake(args: BakeArgs) -> Result<()> {
    let manifest = BakeManifest::load(&args.manifest)?;
    let base_dir = match args.manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let model_dir = args
        .model
        .resolve(manifest.model.as_deref().map(|m| (m, base_dir.as_path())))?;
    let options = BakeOptions {
        base_dir,
        force: args.force,
        threads: capped_threads(args.threads),
        ..BakeOptions::new(&args.out, &model_dir)
    };

    let bar = indicatif::ProgressBar::with_draw_target(
        Some(manifest.items.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut on_event = |event: &BakeEvent<'_>| match event {
        BakeEvent::Planned { items } => {
            let needed = items
                .iter()
                .filter(|i| matches!(i.state, ItemState::Needed(_)))
                .count();
            status(
                &bar,
                format!(
                    "bake {}: {} items, {needed} to generate, into {} (model {})",
                    args.manifest.display(),
                    items.len(),
                    args.out.display(),
                    model_dir.display()
                ),
            );
        }
        BakeEvent::LoadingModel { dir } => bar.set_message(format!("loading {}", dir.display())),
        BakeEvent::ModelLoaded { dir, seconds } => {
            status(&bar, format!("loaded {} in {seconds:.2} s", dir.display()))
        }
        BakeEvent::ItemStarted { name, reason, .. } => {
            bar.set_message(format!("{name} ({reason})"))
        }
        BakeEvent::Step {
            name, step, total, ..
        } => bar.set_message(format!("{name}: step {step}/{total}")),
        BakeEvent::ItemFinished { name, outcome, .. } => {
            bar.inc(1);
            let line = match outcome {
                ItemOutcome::Baked {
                    png,
                    width,
                    height,
                    seconds,
                } => format!(
                    "done    {name} -> {} ({width}x{height}, {seconds:.2} s)",
                    png.display()
                ),
                ItemOutcome::Skipped => format!("skipped {name} (up to date)"),
                ItemOutcome::Failed(reason) => format!("FAILED  {name}: {reason}"),
            };
            status(&bar, line);
        }
    };
    let result = bevy_diffusion::bake::bake(&manifest, &options, &mut on_event);
    bar.finish_and_clear();
    let report = result?;
    eprintln!("{}", report.summary());
    let failed: Vec<&str> = report
        .items
        .iter()
        .filter(|(_, o)| matches!(o, ItemOutcome::Failed(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} items failed: {}",
            failed.len(),
            report.items.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn inspect_folder(args: InspectArgs) -> Result<()> {
    let hub = HubOptions {
        cache_dir: args.hf_cache,
        prefer_fp16: args.fp16,
        ..HubOptions::default()
    };
    let dir = resolve_model(&args.dir, Path::new("."), &hub)?;
    let dir = dir.strip_prefix("./").map(Path::to_path_buf).unwrap_or(dir);
    let options = InspectOptions {
        max_file_bytes: args.max_file_bytes,
        prefer_fp16_variant: args.fp16,
        full_load: args.load,
    };
    let report = inspect(&dir, &options);
    print!("{report}");
    if !report.is_ok() {
        bail!(
            "{} problem(s) found in {}",
            report.problems.len(),
            dir.display()
        );
    }
    Ok(())
}

/// `--threads N` capped at the machine's cores; prints why when it was changed.
fn capped_threads(threads: Option<usize>) -> Option<usize> {
    let n = threads?;
    let count = bevy_diffusion::kernels::threads::cap_threads(n);
    if let Some(notice) = &count.notice {
        eprintln!("note: {notice}");
    }
    Some(count.threads)
}
