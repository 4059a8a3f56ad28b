//! `texgen serve` (a farm worker), `texgen generate --farm URL` (one request on the farm) and
//! `texgen bake --farm URL` (a manifest's items on the farm): feature `farm`, docs/farm.md.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bevy_diffusion::farm::{FarmClient, FarmLimits, FarmProbe, FarmSettings, ServeConfig};
use bevy_diffusion::runtime::generator::SdGenerator;
use bevy_diffusion::runtime::worker::WorkerEvent;
use bevy_diffusion::tools::bake::farm::{FarmBakeOptions, inline_init_image};

use super::*;

/// `texgen serve`: pull jobs from the farm and run them on a model.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The NATS server with JetStream, e.g. `nats://127.0.0.1:4222`.
    #[arg(long)]
    nats: String,
    #[command(flatten)]
    model: ModelArgs,
    /// Jobs this process runs at once (1..=64; each shares the one loaded model).
    #[arg(long, default_value_t = 1)]
    slots: usize,
    /// The worker's name in job states and events (default: `<host>-<pid>`).
    #[arg(long)]
    name: Option<String>,
    /// Send a preview PNG every N steps (default: none).
    #[arg(long)]
    preview_every: Option<usize>,
}

/// Checks the broker, loads the model, then serves until killed.
pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    // The broker first: an unreachable one is a quick error, not one after a long model load.
    drop(FarmProbe::connect(&args.nats, FarmLimits::default())?);
    let dir = args.model.resolve(None)?;
    let started = Instant::now();
    let model = StableDiffusion::load(&dir, &args.model.load_options())?;
    eprintln!(
        "loaded {} in {:.2} s; serving {} slot(s) from {}",
        dir.display(),
        started.elapsed().as_secs_f64(),
        args.slots,
        args.nats
    );
    // A farm bake's client never loads the model: the worker says what jobs that name no
    // scheduler will run, as `texgen bake` does locally.
    if let Some(line) = scheduler_stand_in_line(&dir) {
        eprintln!("{line} (jobs that name no scheduler)");
    }
    let mut config = ServeConfig::new(args.nats);
    config.slots = args.slots;
    config.preview_every = args.preview_every;
    if let Some(name) = args.name {
        config.name = name;
    }
    let stop = Arc::new(AtomicBool::new(false));
    bevy_diffusion::farm::serve(config, Arc::new(SdGenerator::new(model)), stop)?;
    Ok(())
}

/// `--farm-idle-timeout` in seconds, bounded.
pub(crate) fn idle_timeout(seconds: u64) -> Result<Duration> {
    if !(1..=86_400).contains(&seconds) {
        bail!("--farm-idle-timeout {seconds}: must be in 1..=86400 seconds");
    }
    Ok(Duration::from_secs(seconds))
}

/// Flags that only mean something to a local model; refused with `--farm` (the workers load
/// the model).
pub(crate) fn refuse_local_flags(model: &ModelArgs, loras: &[String]) -> Result<()> {
    let set = [
        ("--model", model.model.is_some()),
        ("--decoder", model.decoder.is_some()),
        ("--lora", !loras.is_empty()),
    ];
    if let Some((flag, _)) = set.iter().find(|(_, on)| *on) {
        bail!(
            "{flag} cannot be combined with --farm: the farm's workers load the model \
             (`texgen serve --model ...`)"
        );
    }
    Ok(())
}

/// Runs `request` on the farm at `url` and writes the PNG to `out`. Gives up when the farm
/// reports nothing on the job for `idle` (no worker running, say).
pub(crate) fn generate_on_farm(
    url: &str,
    request: GenerationRequest,
    out: &Path,
    idle: Duration,
) -> Result<()> {
    // A path means nothing on another machine: the pixels travel instead.
    let request = inline_init_image(&request, Path::new("."))?;
    let client = FarmClient::connect(FarmSettings::new(url))?;
    let id = client
        .submit(request)
        .map_err(|e| anyhow::anyhow!("the farm at {url} refused the request: {e}"))?;
    let hash = client.hash_of(id).unwrap_or_default();
    eprintln!("submitted to {url} as job {hash}");
    loop {
        let event = match client.events().recv_timeout(idle) {
            Ok(e) => e,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => bail!(
                "the farm reported nothing on job {hash} for {} s (is a `texgen serve --nats \
                 {url}` worker running?); the job stays queued",
                idle.as_secs()
            ),
            Err(_) => bail!("the farm client stopped"),
        };
        match event {
            WorkerEvent::Started { .. } => eprintln!("running on the farm"),
            WorkerEvent::Progress { step, total, .. } => eprintln!("step {step}/{total}"),
            WorkerEvent::Finished {
                image,
                seed,
                elapsed,
                cached,
                ..
            } => {
                write_png(&image, out)?;
                eprintln!(
                    "wrote {} ({}x{}, seed {seed}{}) in {:.2} s",
                    out.display(),
                    image.width(),
                    image.height(),
                    if cached { ", stored result" } else { "" },
                    elapsed.as_secs_f64()
                );
                return Ok(());
            }
            WorkerEvent::Failed { error, .. } => bail!("the farm failed the request: {error}"),
            WorkerEvent::Cancelled { .. } => bail!("the request was cancelled on the farm"),
            _ => {}
        }
    }
}

/// The farm half of `texgen bake --farm URL`: the same plan, files and sidecars as a local
/// bake of the resolved model folder, the items run by the farm's workers.
pub(crate) fn bake_options_for_farm(url: &str, idle: Duration) -> FarmBakeOptions {
    FarmBakeOptions {
        settings: FarmSettings::new(url),
        idle_timeout: idle,
    }
}
