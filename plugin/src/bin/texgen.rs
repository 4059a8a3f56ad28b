//! `texgen`: the command-line face of bevy_diffusion's core.
//!
//! `texgen generate --prompt "mossy cobblestone" --out wall.png` runs one request on the embedded
//! default model (or `--model DIR`, any diffusers-layout SD folder). Errors end the process with a
//! non-zero exit code and one line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
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
enum Command {
    /// Generate one image from a prompt.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// Model folder in the diffusers layout (default: the embedded model in assets/models/default).
    #[arg(long)]
    model: Option<PathBuf>,
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
            eprintln!("texgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
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
    let model_dir = args
        .model
        .unwrap_or_else(bevy_diffusion::embedded::default_model_dir);
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
    let out =
        pipeline::generate_with_noise(&model, &request, &explicit, &mut noise, &mut StepPrinter)?;
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
    match s {
        "texture" => Ok(AssetKind::Texture),
        "sprite" => Ok(AssetKind::Sprite),
        other => bail!("--kind {other}: expected texture or sprite"),
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
    let tmp = path.with_extension("png.tmp");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
