//! `texgen inspect`: a model folder described, every problem listed.

use super::*;

pub(crate) fn inspect_folder(args: InspectArgs) -> Result<()> {
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
    let loras = parse_loras(&args.loras)?;
    if loras.is_empty() {
        return Ok(());
    }
    let folder_options = bevy_diffusion::loading::folder::FolderOptions {
        prefer_fp16_variant: args.fp16,
        max_file_bytes: args.max_file_bytes,
    };
    let folder = bevy_diffusion::loading::folder::ModelFolder::open(&dir, &folder_options)?;
    let targets = bevy_diffusion::loading::lora::lora_targets(&folder);
    let mut problems = 0;
    for spec in &loras {
        let lora = check_lora(spec, &targets)
            .with_context(|| format!("--lora {}", spec.path.display()))?;
        print!("{lora}");
        problems += lora.problems.len();
    }
    if problems > 0 {
        bail!("{problems} LoRA problem(s) found against {}", dir.display());
    }
    Ok(())
}
