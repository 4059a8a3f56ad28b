//! `texgen generate`: one request, on the embedded model or `--model`, to a PNG.

use super::*;

/// Prints one line per denoising step.
pub(crate) struct StepPrinter;
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

pub(crate) fn generate(args: GenerateArgs) -> Result<()> {
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
        mask: args.mask.map(InitImage::Path),
        upscale: args.upscale,
        pbr: args.pbr,
        kind: parse_kind(&args.kind)?,
        pixel_art: args.pixel_art.as_deref().map(parse_pixel_art).transpose()?,
        original_size: args.original_size,
        crops_coords_top_left: args.crops_coords_top_left,
        target_size: args.target_size,
        negative_original_size: args.negative_original_size,
        negative_crops_coords_top_left: args.negative_crops_coords_top_left,
        negative_target_size: args.negative_target_size,
        ..Default::default()
    };
    // Fail fast on what does not need the model (the size's multiple is checked after loading).
    request.validate(1)?;
    if request.pbr {
        art::pbr_target(&args.out)?;
    }
    if let Some(InitImage::Path(p)) = &request.init_image
        && !p.is_file()
    {
        bail!("--init-image {}: no such file", p.display());
    }
    if let Some(InitImage::Path(p)) = &request.mask
        && !p.is_file()
    {
        bail!("--mask {}: no such file", p.display());
    }
    #[cfg(feature = "farm")]
    if let Some(url) = &args.farm {
        refuse_local_flags(&args.model, &args.loras)?;
        if args.noise.is_some() {
            bail!("--noise cannot be combined with --farm (the workers draw the seed's noise)");
        }
        let idle = idle_timeout(args.farm_idle_timeout)?;
        return generate_on_farm(url, request, &args.out, idle);
    }
    let load = LoadOptions {
        loras: parse_loras(&args.loras)?,
        ..args.model.load_options()
    };
    let model_dir = args.model.resolve(None)?;
    let started = Instant::now();
    let model = StableDiffusion::load(&model_dir, &load)?;
    if let Some(note) = &model.dtype_notice {
        eprintln!("texgen: note: --dtype {}: {note}", load.dtype);
    }
    eprintln!(
        "loaded {} in {:.2} s{}",
        model_dir.display(),
        started.elapsed().as_secs_f64(),
        // Say so when bf16 really runs (a bf16 request that fell back to f32 has its note).
        if model.dtype == bevy_diffusion::ComputeDtype::Bf16 {
            " (computing in bf16)"
        } else {
            ""
        }
    );
    // The library logs this through `tracing`, which texgen does not print: say it here, once,
    // when the request leaves the scheduler to the folder (an unknown class runs a stand-in).
    if request.scheduler.is_none()
        && let Some((note, unknown)) = model.scheduler_config.stand_in()
    {
        eprintln!("{}: {note}", if unknown { "warning" } else { "note" });
    }
    let explicit = match &args.noise {
        Some(path) => read_noise_file(path)?,
        None => ExplicitNoise::default(),
    };
    let started = Instant::now();
    let mut noise = SeededNoise::new(request.seed);
    let threads = capped_threads(args.threads);
    let out = model.run_with_threads(threads, || {
        pipeline::generate_with_noise(&model, &request, &explicit, &mut noise, &mut StepPrinter)
    })?;
    let truncation = bevy_diffusion::pipeline::PromptTruncation {
        prompt: out.prompt_truncated,
        negative_prompt: out.negative_prompt_truncated,
    };
    if let Some(note) = truncation.note() {
        eprintln!("note: {note}");
    }
    let image = bevy_diffusion::pipeline::postprocess::finish(out.image, &request);
    write_png(&image, &args.out)?;
    if request.pbr {
        art::pbr_beside(&image, &args.out)?;
    }
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

/// `--lora FILE[:SCALE]` values.
pub(crate) fn parse_loras(values: &[String]) -> Result<Vec<LoraSpec>> {
    let parse = |v: &String| LoraSpec::parse(v).with_context(|| format!("--lora {v}"));
    values.iter().map(parse).collect()
}

pub(crate) fn parse_kind(s: &str) -> Result<AssetKind> {
    // Any case: `sprite`, `Sprite`, `SPRITE`.
    match s.to_ascii_lowercase().as_str() {
        "texture" => Ok(AssetKind::Texture),
        "sprite" => Ok(AssetKind::Sprite),
        _ => bail!("--kind {s}: expected texture or sprite"),
    }
}

/// `A,B` (two non-negative integers, diffusers' tuple order) for the SDXL micro-conditioning flags.
pub(crate) fn parse_pair(s: &str) -> std::result::Result<(u32, u32), String> {
    let parsed = s
        .split_once(',')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    parsed.ok_or_else(|| format!("`{s}`: expected two whole numbers A,B, e.g. 1024,1024"))
}

pub(crate) fn parse_pixel_art(s: &str) -> Result<PixelArt> {
    let parsed = s.split_once('x').and_then(|(c, n)| {
        Some(PixelArt {
            cell: c.parse().ok()?,
            colors: n.parse().ok()?,
        })
    });
    parsed.with_context(|| format!("--pixel-art {s}: expected CELLxCOLORS, e.g. 2x16"))
}

/// Reads `noise` (and optional `vae_sample_eps`) from a safetensors file.
pub(crate) fn read_noise_file(path: &std::path::Path) -> Result<ExplicitNoise> {
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
pub(crate) fn write_png(image: &image::RgbaImage, path: &std::path::Path) -> Result<()> {
    bevy_diffusion::runtime::cache::write_png_atomic(image, path)
        .with_context(|| format!("--out {}", path.display()))
}
