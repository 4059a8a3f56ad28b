//! `texgen`: the command-line face of bevy_diffusion's core.
//!
//! - `texgen generate --prompt "mossy cobblestone" --out wall.png` runs one request on the
//!   embedded default model (or `--model DIR`, any diffusers-layout SD folder).
//! - `texgen bake textures.ron --out assets/textures` bakes a manifest of named requests,
//!   regenerating only what changed ([`bevy_diffusion::tools::bake`]).
//! - `texgen inspect DIR` describes a model folder and lists every problem with it
//!   ([`bevy_diffusion::tools::inspect`]).
//! - `texgen pbr --in PNG --out-dir DIR` and `texgen upscale --in PNG [--model DIR] --out PNG`:
//!   the game-art tools on finished textures (`art.rs`); `generate --mask` inpaints.
//!
//! With the `hf-hub` feature, `--model` also takes a Hugging Face repo id
//! ([`bevy_diffusion::loading::hub`]). Errors end the process with a non-zero exit code and one line on
//! stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bevy_diffusion::loading::hub::{HubOptions, resolve_model};
use bevy_diffusion::loading::lora::{LoraSpec, check_lora};
use bevy_diffusion::noise::SeededNoise;
use bevy_diffusion::pipeline::{self, DenoisingStep, ExplicitNoise, GenerationHooks};
use bevy_diffusion::request::{AssetKind, InitImage, PixelArt};
use bevy_diffusion::schedulers::TimestepSpacing;
use bevy_diffusion::tools::bake::{BakeEvent, BakeManifest, BakeOptions, ItemOutcome, ItemState};
use bevy_diffusion::tools::inspect::{InspectOptions, inspect};
use bevy_diffusion::{GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion, Tiling};
use clap::{Args, Parser, Subcommand};

mod art;
mod bake;
#[cfg(feature = "farm")]
mod farm;
mod generate;
mod inspect;
use bake::*;
#[cfg(feature = "farm")]
use farm::*;
use generate::*;
use inspect::*;

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
    /// PBR maps of a texture: NAME_normal.png (OpenGL, +Y up), NAME_height.png,
    /// NAME_roughness.png, NAME_ao.png.
    Pbr(art::PbrArgs),
    /// Upscale an image 4x with an x4 upscaler folder (--model), else with wrap-aware Lanczos3.
    Upscale(art::UpscaleArgs),
    /// Serve jobs of a generation farm on NATS JetStream (feature `farm`; docs/farm.md).
    #[cfg(feature = "farm")]
    Serve(ServeArgs),
}

/// Where the model comes from.
#[derive(Args)]
struct ModelArgs {
    /// Model folder in the diffusers layout (default: the default model: an
    /// assets/models/default folder beside the executable or in the current folder, else the
    /// one compiled in, `<embedded>`). With the `hf-hub` feature also a Hugging Face repo id
    /// (`owner/name[@revision]`), downloaded once into the Hub cache.
    #[arg(long)]
    model: Option<String>,
    /// Hugging Face cache folder for downloaded models (default: $HF_HOME/hub or
    /// ~/.cache/huggingface/hub).
    #[arg(long)]
    hf_cache: Option<PathBuf>,
    /// A TAESD folder (diffusers AutoencoderTiny, e.g. madebyollin/taesd) that decodes the
    /// images instead of the model's own VAE: many times faster, slightly softer. For SD 1.x/2.x
    /// models (SDXS-style folders already ship it as their vae).
    #[arg(long, value_name = "DIR")]
    decoder: Option<PathBuf>,
    /// An x4 upscaler folder (StableDiffusionUpscalePipeline layout) for `--upscale 4` (or a
    /// manifest item's `upscale: 4`); without it upscaling is wrap-aware Lanczos3.
    #[arg(long, value_name = "DIR")]
    upscaler: Option<PathBuf>,
    /// Compute precision: f32 (default) or bf16. bf16 needs bf16 multiply instructions
    /// (x86-64 AVX-512 BF16), and then runs the UNet's transformer linear layers and its
    /// attention products in bf16 (its convolutions too with BEVY_DIFFUSION_BF16_CONV=1:
    /// faster, less exact); without them the model runs in f32 and a note says why.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: bevy_diffusion::ComputeDtype,
}

fn parse_dtype(s: &str) -> std::result::Result<bevy_diffusion::ComputeDtype, String> {
    s.parse()
}

impl ModelArgs {
    /// How to load: the `--decoder` and `--upscaler`, if any.
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            decoder: self.decoder.clone(),
            upscaler: self.upscaler.clone(),
            dtype: self.dtype,
            ..LoadOptions::default()
        }
    }

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
            (None, None) => return Ok(bevy_diffusion::loading::embedded::default_model_dir()),
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
    /// A LoRA file (.safetensors, kohya or diffusers/PEFT naming) merged into the model, with
    /// an optional lora_scale (default 1.0): `--lora style.safetensors:0.8`. Repeatable;
    /// replaces the manifest's `loras`.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<String>,
    /// Regenerate every item, even those that are up to date.
    #[arg(long)]
    force: bool,
    /// CPU threads for tensor maths (default: 1 for small models such as the embedded one, else
    /// all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the items on a generation farm (a NATS URL, e.g. nats://127.0.0.1:4222; feature
    /// `farm`): planned with the model folder as a local bake (its workers must serve that
    /// model), written to the same files and sidecars.
    #[cfg(feature = "farm")]
    #[arg(long, value_name = "URL")]
    farm: Option<String>,
    /// With --farm: give up on the items still open when the farm reports nothing for this many
    /// seconds (no worker running, say).
    #[cfg(feature = "farm")]
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    farm_idle_timeout: u64,
}

#[derive(Args)]
struct InspectArgs {
    /// The model folder (with the `hf-hub` feature also a repo id).
    dir: String,
    /// Report weight files larger than this many bytes as a problem.
    #[arg(long, default_value_t = bevy_diffusion::loading::folder::DEFAULT_MAX_FILE_BYTES)]
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
    /// Check a LoRA file against the model: which modules it patches (shapes, rank, alpha) and
    /// every key that matches nothing or does not fit. Repeatable; `FILE[:SCALE]`.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<String>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A LoRA file (.safetensors, kohya or diffusers/PEFT naming) merged into the model, with
    /// an optional lora_scale (default 1.0): `--lora style.safetensors:0.8`. Repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<String>,
    /// What to draw.
    #[arg(long, default_value = "")]
    prompt: String,
    /// What to avoid (classifier-free guidance's unconditional prompt). Absent = diffusers'
    /// `negative_prompt=None` (SDXL: zero embeddings); `--negative-prompt ""` encodes "".
    #[arg(long)]
    negative_prompt: Option<String>,
    /// SDXL micro-conditioning `original_size` as H,W pixels (default: the output size).
    #[arg(long, value_name = "H,W", value_parser = parse_pair)]
    original_size: Option<(u32, u32)>,
    /// SDXL `crops_coords_top_left` as TOP,LEFT pixels.
    #[arg(long, value_name = "TOP,LEFT", value_parser = parse_pair, default_value = "0,0")]
    crops_coords_top_left: (u32, u32),
    /// SDXL `target_size` as H,W pixels (default: the output size).
    #[arg(long, value_name = "H,W", value_parser = parse_pair)]
    target_size: Option<(u32, u32)>,
    /// SDXL: the unconditional row's original_size (used with --negative-target-size).
    #[arg(long, value_name = "H,W", value_parser = parse_pair)]
    negative_original_size: Option<(u32, u32)>,
    /// SDXL: the unconditional row's crops_coords_top_left.
    #[arg(long, value_name = "TOP,LEFT", value_parser = parse_pair, default_value = "0,0")]
    negative_crops_coords_top_left: (u32, u32),
    /// SDXL: the unconditional row's target_size (used with --negative-original-size).
    #[arg(long, value_name = "H,W", value_parser = parse_pair)]
    negative_target_size: Option<(u32, u32)>,
    /// Seed of the noise stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps (num_inference_steps; default: the model folder's bevy_diffusion.json,
    /// e.g. 12 for the embedded model, else 20).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale, off at <= 1 (default: the model folder's
    /// bevy_diffusion.json, e.g. 4 for the embedded model, else 7.5).
    #[arg(long)]
    guidance: Option<f64>,
    /// ddim | euler | euler-a | dpmpp-2m | dpmpp-2m-karras | lcm (default: the folder's scheduler).
    #[arg(long)]
    scheduler: Option<String>,
    /// leading | linspace | trailing (overrides the folder's scheduler config).
    #[arg(long)]
    timestep_spacing: Option<String>,
    /// Output width in pixels, a multiple of the model's VAE factor f (8 for SD and for
    /// the embedded model; `texgen inspect` prints it) (default: the model's native size).
    #[arg(long, default_value_t = 0)]
    width: u32,
    /// Output height in pixels, a multiple of the VAE factor f (default: the model's native size).
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
    /// Inpainting: a mask PNG of the init image's size, white = repaint, black = keep (needs
    /// --init-image).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Upscale the result by this factor, 1..=8 (the --upscaler model for 4, else wrap-aware
    /// Lanczos3 on tiled axes).
    #[arg(long)]
    upscale: Option<u32>,
    /// Also write the PBR maps (OUT_normal.png, OUT_height.png, OUT_roughness.png, OUT_ao.png).
    #[arg(long)]
    pbr: bool,
    /// A safetensors file with a tensor `noise` [1, C, H/f, W/f] (f = the VAE factor) used instead of the seed's
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
    /// Run it on a generation farm instead (a NATS URL, e.g. nats://127.0.0.1:4222; feature
    /// `farm`): the model flags are the workers' business then.
    #[cfg(feature = "farm")]
    #[arg(long, value_name = "URL")]
    farm: Option<String>,
    /// With --farm: give up when the farm reports nothing on the job for this many seconds (no
    /// worker running, say).
    #[cfg(feature = "farm")]
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    farm_idle_timeout: u64,
}

/// Exit code of a bad command line (clap's convention, kept for scripts).
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap writes them and exit 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("texgen: error: {}", clap_one_line(&e));
            return ExitCode::from(USAGE_ERROR);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("texgen: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// clap's multi-line error as one line: its first line without the `error: ` prefix, plus the
/// tip it gives (e.g. "a similar argument exists: '--steps'"), plus where to find the usage.
fn clap_one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"));
    let first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let tips: Vec<&str> = lines
        .filter(|l| l.starts_with("tip:"))
        .map(|l| l.trim_start_matches("tip: "))
        .collect();
    let mut line = first;
    for tip in tips {
        line.push_str("; ");
        line.push_str(tip);
    }
    line.push_str(" (see `texgen --help`)");
    line
}

/// `--threads N` capped at the machine's cores, saying so on stderr.
fn capped_threads(threads: Option<usize>) -> Option<usize> {
    let n = threads?;
    let (capped, why) = bevy_diffusion::compute_pool::cap_threads(n);
    if let Some(why) = why {
        eprintln!("texgen: note: --threads: {why}");
    }
    Some(capped)
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
        Command::Pbr(args) => art::pbr(args),
        Command::Upscale(args) => art::upscale(args),
        #[cfg(feature = "farm")]
        Command::Serve(args) => serve(args),
    }
}
