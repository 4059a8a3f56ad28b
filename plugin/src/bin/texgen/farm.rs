//! `texgen serve` (a farm worker) and `texgen generate --farm URL` (one request on the farm):
//! feature `farm`, docs/farm.md.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bevy_diffusion::farm::{FarmClient, FarmSettings, ServeConfig};
use bevy_diffusion::runtime::generator::SdGenerator;
use bevy_diffusion::runtime::worker::WorkerEvent;

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

/// Loads the model, then serves until killed.
pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    let dir = args.model.resolve(None)?;
    let started = std::time::Instant::now();
    let model = StableDiffusion::load(&dir, &args.model.load_options())?;
    eprintln!(
        "loaded {} in {:.2} s; serving {} slot(s) from {}",
        dir.display(),
        started.elapsed().as_secs_f64(),
        args.slots,
        args.nats
    );
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

/// Runs `request` on the farm at `url` and writes the PNG to `out`.
pub(crate) fn generate_on_farm(url: &str, mut request: GenerationRequest, out: &Path) -> Result<()> {
    // A path means nothing on another machine: the pixels travel instead.
    if let Some(InitImage::Path(p)) = &request.init_image {
        let img = image::open(p)
            .map_err(|e| anyhow::anyhow!("--init-image {}: {e}", p.display()))?
            .to_rgba8();
        request.init_image = Some(InitImage::Rgba {
            width: img.width(),
            height: img.height(),
            pixels: img.into_raw(),
        });
    }
    let client = FarmClient::connect(FarmSettings::new(url))?;
    let id = client.submit(request)?;
    eprintln!("submitted to {url} as job {}", client.hash_of(id).unwrap_or_default());
    loop {
        let event = client
            .events()
            .recv()
            .map_err(|_| anyhow::anyhow!("the farm client stopped"))?;
        match event {
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
