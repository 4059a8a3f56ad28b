//! `texgen pbr` and `texgen upscale`: the game-art tools on finished textures
//! ([`bevy_diffusion::pipeline::pbr`], [`bevy_diffusion::pipeline::upscale`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::generate::StepPrinter;
use anyhow::{Context, Result, bail};
use bevy_diffusion::pipeline::pbr::{PbrImages, PbrOptions, check_map_name, pbr_maps};
use bevy_diffusion::pipeline::upscale::{
    UpscaleNoise, UpscaleRequest, Upscaler, keep_alpha, lanczos_upscale,
};
use bevy_diffusion::{LoadOptions, SchedulerKind, Tiling};
use clap::Args;

#[derive(Args)]
pub struct PbrArgs {
    /// The albedo (colour) texture, PNG or JPEG.
    #[arg(long = "in")]
    input: PathBuf,
    /// Folder for NAME_normal.png, NAME_height.png, NAME_roughness.png, NAME_ao.png.
    #[arg(long)]
    out_dir: PathBuf,
    /// NAME (default: the input's file stem): a plain file-name stem, no path separators or `..`.
    #[arg(long)]
    name: Option<String>,
    /// Bump depth: height in pixels of a black-to-white step.
    #[arg(long, default_value_t = PbrOptions::default().normal_strength)]
    normal_strength: f32,
    /// Gaussian sigma (pixels) smoothing the luminance before it becomes the height; 0 = none.
    #[arg(long, default_value_t = PbrOptions::default().height_blur)]
    height_blur: f32,
    /// Occlusion per unit of height below the neighbourhood.
    #[arg(long, default_value_t = PbrOptions::default().ao_strength)]
    ao_strength: f32,
    /// Gaussian sigma (pixels) of the occlusion neighbourhood.
    #[arg(long, default_value_t = PbrOptions::default().ao_radius)]
    ao_radius: f32,
    /// Roughness of a uniform area, 0..=1.
    #[arg(long, default_value_t = PbrOptions::default().roughness_base)]
    roughness_base: f32,
}

/// `texgen pbr --in PNG --out-dir DIR`.
pub fn pbr(args: PbrArgs) -> Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("--in has no file name")?,
    };
    // Before any work: NAME must keep the maps inside --out-dir (no `../`, no absolute path).
    check_map_name(&name).context(if args.name.is_some() {
        "--name"
    } else {
        "--in (its file stem is the NAME)"
    })?;
    let albedo = image::open(&args.input)
        .with_context(|| format!("--in {}", args.input.display()))?
        .to_rgba8();
    let options = PbrOptions {
        normal_strength: args.normal_strength,
        height_blur: args.height_blur,
        ao_strength: args.ao_strength,
        ao_radius: args.ao_radius,
        roughness_base: args.roughness_base,
        ..PbrOptions::default()
    };
    let started = Instant::now();
    let maps = pbr_maps(&albedo, &options)?;
    let paths = PbrImages::from(&maps).save(&args.out_dir, &name)?;
    for p in &paths {
        eprintln!("wrote {}", p.display());
    }
    eprintln!(
        "PBR maps of {} ({}x{}) in {:.2} s",
        args.input.display(),
        albedo.width(),
        albedo.height(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The folder and NAME the PBR maps of `--out` go to (`out`'s folder and stem), refused as
/// `pbr --name` would refuse it ([`check_map_name`]), so a bad `--out` fails before generating.
pub fn pbr_target(out: &Path) -> Result<(PathBuf, String)> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("--out has no file name")?;
    check_map_name(&name).with_context(|| format!("--pbr with --out {}", out.display()))?;
    Ok((dir, name))
}

/// Writes the four PBR maps of `image` beside `out` (`out`'s stem as NAME).
pub fn pbr_beside(image: &image::RgbaImage, out: &Path) -> Result<()> {
    let (dir, name) = pbr_target(out)?;
    let maps = pbr_maps(image, &PbrOptions::default())?;
    for p in PbrImages::from(&maps).save(&dir, &name)? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct UpscaleArgs {
    /// The low-res image, PNG or JPEG.
    #[arg(long = "in")]
    input: PathBuf,
    /// An x4 upscaler folder (StableDiffusionUpscalePipeline layout). Without it: Lanczos3.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Seamless tiling of the input: none | x | y | xy (circular padding / wrapped resampling).
    #[arg(long, default_value = "none")]
    tiling: String,
    /// Lanczos factor (1..=8) when no --model is given; the upscaler model is always 4x.
    #[arg(long, default_value_t = 4)]
    factor: u32,
    /// Prompt for the diffusion upscaler.
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Noise added to the low-res image (0..=max_noise_level, 350).
    #[arg(long, default_value_t = 20)]
    noise_level: u32,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 9.0)]
    guidance: f64,
    /// ddim | euler | euler-a | dpmpp-2m | dpmpp-2m-karras | lcm (default: the folder's).
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the PNG.
    #[arg(long)]
    out: PathBuf,
}

/// `texgen upscale --in PNG [--model DIR] [--tiling xy] --out PNG`.
pub fn upscale(args: UpscaleArgs) -> Result<()> {
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
    let low = image::open(&args.input)
        .with_context(|| format!("--in {}", args.input.display()))?
        .to_rgba8();
    let started = Instant::now();
    let image = match &args.model {
        None => lanczos_upscale(&low, args.factor, tiling)?,
        Some(dir) => {
            let up = Upscaler::load(dir, &LoadOptions::default())?;
            eprintln!(
                "loaded {} in {:.2} s",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            let request = UpscaleRequest {
                prompt: args.prompt,
                negative_prompt: args.negative_prompt,
                noise_level: args.noise_level,
                guidance_scale: args.guidance,
                num_inference_steps: args.steps,
                scheduler: args
                    .scheduler
                    .as_deref()
                    .map(str::parse::<SchedulerKind>)
                    .transpose()?,
                seed: args.seed,
                tiling,
            };
            let mut big = bevy_diffusion::pipeline::upscale::upscale(
                &up,
                &low,
                &request,
                &UpscaleNoise::default(),
                &mut StepPrinter,
            )?
            .image;
            // As `generate --upscale 4`: a sprite keeps its (resampled) transparency.
            keep_alpha(&low, &mut big, up.factor() as u32, tiling)?;
            big
        }
    };
    bevy_diffusion::runtime::cache::write_png_atomic(&image, &args.out)
        .with_context(|| format!("--out {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({}x{} from {}x{}) in {:.2} s",
        args.out.display(),
        image.width(),
        image.height(),
        low.width(),
        low.height(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
