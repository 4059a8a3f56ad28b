//! `texgen bake`: a manifest of named requests baked to PNGs + sidecars, only what changed.

use super::*;

/// Prints a status line above the progress bar (or plainly when the bar is hidden, e.g. when
/// stderr is not a terminal: indicatif then drops `println`).
pub(crate) fn status(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

pub(crate) fn bake(args: BakeArgs) -> Result<()> {
    let manifest = BakeManifest::load(&args.manifest)?;
    let base_dir = match args.manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let model_dir = args
        .model
        .resolve(manifest.model.as_deref().map(|m| (m, base_dir.as_path())))?;
    let mut options = BakeOptions {
        base_dir,
        force: args.force,
        threads: capped_threads(args.threads),
        load: args.model.load_options(),
        ..BakeOptions::new(&args.out, &model_dir)
    };
    options.load.loras = parse_loras(&args.loras)?;

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
    // Whether an item to generate leaves the scheduler to the folder (then a stand-in is
    // worth saying, once, when the model loads).
    let mut folder_scheduler = false;
    let mut on_event = |event: &BakeEvent<'_>| match event {
        BakeEvent::Planned { items } => {
            folder_scheduler = uses_folder_scheduler(items);
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
            status(&bar, format!("loaded {} in {seconds:.2} s", dir.display()));
            if folder_scheduler && let Some(line) = scheduler_stand_in_line(dir) {
                status(&bar, line);
            }
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
                    truncated,
                } => format!(
                    "done    {name} -> {} ({width}x{height}, {seconds:.2} s){}",
                    png.display(),
                    truncated
                        .note()
                        .map(|n| format!("; note: {n}"))
                        .unwrap_or_default()
                ),
                ItemOutcome::Skipped => format!("skipped {name} (up to date)"),
                ItemOutcome::Failed(reason) => format!("FAILED  {name}: {reason}"),
            };
            status(&bar, line);
        }
    };
    #[cfg(feature = "farm")]
    let result = match &args.farm {
        Some(url) => {
            let farm = bake_options_for_farm(url, idle_timeout(args.farm_idle_timeout)?);
            status(&bar, format!("baking on the farm at {url}"));
            bevy_diffusion::tools::bake::farm::bake_on_farm(
                &manifest,
                &options,
                &farm,
                &mut on_event,
            )
        }
        None => bevy_diffusion::tools::bake::bake(&manifest, &options, &mut on_event),
    };
    #[cfg(not(feature = "farm"))]
    let result = bevy_diffusion::tools::bake::bake(&manifest, &options, &mut on_event);
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

/// True when an item of the plan that will be generated names no scheduler (it runs the
/// folder's `scheduler_config.json` class, or that class's stand-in).
pub(crate) fn uses_folder_scheduler(items: &[bevy_diffusion::tools::bake::PlannedItem]) -> bool {
    items
        .iter()
        .any(|i| matches!(i.state, ItemState::Needed(_)) && i.item.request.scheduler.is_none())
}

/// `warning: ...` (an unknown `_class_name`) or `note: ...` (a known class we run a stand-in
/// for) about the model folder `dir`'s scheduler, as `texgen generate` prints it; `None` when
/// the class runs exactly or the config cannot be read (loading the model already read it).
pub(crate) fn scheduler_stand_in_line(dir: &Path) -> Option<String> {
    let path = dir.join("scheduler").join("scheduler_config.json");
    let config = bevy_diffusion::schedulers::SchedulerConfig::from_file(&path).ok()?;
    let (note, unknown) = config.stand_in()?;
    Some(format!(
        "{}: {note}",
        if unknown { "warning" } else { "note" }
    ))
}
