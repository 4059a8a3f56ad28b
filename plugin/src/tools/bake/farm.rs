//! `texgen bake --farm URL` (feature `farm`): the items of a manifest run on a generation farm
//! ([`crate::farm`]) instead of a local model, written to the same `NAME.png` +
//! `NAME.texgen.json` files as a local bake.
//!
//! The plan is a local bake's ([`super::plan`] on the model folder: its identity, no weights
//! read), so a farm bake and a local bake of the same folder skip each other's up-to-date items;
//! the farm's workers must serve that model (`texgen serve --model <the same folder>`). Items are
//! submitted as batch jobs (priority below 0: players' interactive requests go first), as many at
//! once as the broker takes (a full queue is retried as items end); each finished image is
//! written as it arrives, a failed one is reported with the worker's reason and the rest go on.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{
    BakeError, BakeEvent, BakeManifest, BakeOptions, BakeReport, ItemOutcome, ItemState, Prepared,
    Written, prepare, resolve_paths, write_item,
};
use crate::error::DiffusionError;
use crate::farm::{FarmClient, FarmSettings};
use crate::request::{GenerationRequest, InitImage};
use crate::runtime::worker::{RequestId, SubmitError, WorkerEvent};

/// How a farm bake reaches the farm.
#[derive(Debug, Clone)]
pub struct FarmBakeOptions {
    /// The broker and the farm's model name.
    pub settings: FarmSettings,
    /// Items still open fail when the farm reports nothing at all for this long (no worker
    /// running, say); the jobs stay queued on the farm.
    pub idle_timeout: Duration,
}

impl FarmBakeOptions {
    /// The farm at `url`, default settings, 10 minutes' idle timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            settings: FarmSettings::new(url),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// `request` with an init image or inpainting mask given by path (relative to `base_dir`)
/// replaced by its RGBA8 pixels (`InitImage::Rgba`, read as the pipeline reads a path): a path
/// means nothing on another machine.
///
/// # Errors
/// [`DiffusionError::Image`] naming the file when it cannot be read or decoded.
pub fn inline_init_image(
    request: &GenerationRequest,
    base_dir: &Path,
) -> Result<GenerationRequest, DiffusionError> {
    let mut request = resolve_paths(request, base_dir);
    for slot in [&mut request.init_image, &mut request.mask] {
        if let Some(InitImage::Path(p)) = slot {
            let img = image::open(&*p)
                .map_err(|e| DiffusionError::Image {
                    path: p.clone(),
                    reason: e.to_string(),
                })?
                .to_rgba8();
            *slot = Some(InitImage::Rgba {
                width: img.width(),
                height: img.height(),
                pixels: img.into_raw(),
            });
        }
    }
    Ok(request)
}

/// Bakes `manifest` on the farm (see the module docs). `options` are a local bake's: the model
/// folder plans, `out_dir` receives the files, `cancel` stops the bake (the farm's jobs of the
/// items in flight are cancelled); `threads` is the workers' business.
///
/// # Errors
/// [`BakeError::Model`] when the model folder fails its checks, when LoRAs or a decoder are
/// asked for (the workers load the model: `texgen serve` applies them) or when the farm cannot
/// be reached; [`BakeError::Io`] when `out_dir` cannot be created. A refused, failed or
/// timed-out item is an [`ItemOutcome::Failed`] with the reason, and the others go on.
pub fn bake_on_farm(
    manifest: &BakeManifest,
    options: &BakeOptions,
    farm: &FarmBakeOptions,
    on_event: &mut (dyn FnMut(&BakeEvent<'_>) + Send),
) -> Result<BakeReport, BakeError> {
    if options.load.decoder.is_some()
        || !options.load.loras.is_empty()
        || !manifest.loras.is_empty()
    {
        return Err(BakeError::Model(DiffusionError::Farm {
            reason: "LoRAs and --decoder are not applied by a farm bake: the workers load the \
                     model (give them to `texgen serve`)"
                .into(),
        }));
    }
    let Prepared {
        planned, identity, ..
    } = prepare(manifest, options, on_event)?;
    let mut outcomes: Vec<Option<ItemOutcome>> = vec![None; planned.len()];
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let finish = |on_event: &mut (dyn FnMut(&BakeEvent<'_>) + Send),
                  index: usize,
                  outcome: ItemOutcome,
                  outcomes: &mut Vec<Option<ItemOutcome>>| {
        on_event(&BakeEvent::ItemFinished {
            index,
            name: &planned[index].item.name,
            outcome: &outcome,
        });
        outcomes[index] = Some(outcome);
    };
    for (index, entry) in planned.iter().enumerate() {
        match &entry.state {
            ItemState::UpToDate => finish(on_event, index, ItemOutcome::Skipped, &mut outcomes),
            ItemState::Invalid(reason) => finish(
                on_event,
                index,
                ItemOutcome::Failed(reason.clone()),
                &mut outcomes,
            ),
            ItemState::Needed(_) => waiting.push_back(index),
        }
    }
    let mut report = BakeReport {
        items: Vec::with_capacity(planned.len()),
        model_loaded: false,
        model_identity: identity.clone(),
        cancelled: false,
    };
    if !waiting.is_empty() {
        let client = FarmClient::connect(farm.settings.clone())?;
        let url = &farm.settings.url;
        let mut in_flight: HashMap<RequestId, (usize, Instant)> = HashMap::new();
        let mut last_news = Instant::now();
        loop {
            // Submit what the broker takes; a full queue waits for items to end.
            while let Some(&index) = waiting.front() {
                let entry = &planned[index];
                let request = match inline_init_image(&entry.item.request, &options.base_dir) {
                    Ok(mut r) => {
                        r.priority = r.priority.min(-1);
                        r
                    }
                    Err(e) => {
                        waiting.pop_front();
                        finish(
                            on_event,
                            index,
                            ItemOutcome::Failed(e.to_string()),
                            &mut outcomes,
                        );
                        continue;
                    }
                };
                match client.submit(request) {
                    Ok(id) => {
                        waiting.pop_front();
                        in_flight.insert(id, (index, Instant::now()));
                        let reason = match &entry.state {
                            ItemState::Needed(r) => format!("{r}; on the farm"),
                            _ => "on the farm".into(),
                        };
                        on_event(&BakeEvent::ItemStarted {
                            index,
                            name: &entry.item.name,
                            reason: &reason,
                        });
                    }
                    Err(SubmitError::QueueFull { .. } | SubmitError::PlayerQuota { .. })
                        if !in_flight.is_empty() =>
                    {
                        break;
                    }
                    Err(SubmitError::QueueFull { .. } | SubmitError::PlayerQuota { .. }) => {
                        // Full with other clients' jobs: wait for room, within the idle bound.
                        if last_news.elapsed() >= farm.idle_timeout {
                            waiting.pop_front();
                            let why = format!("the farm at {url} stayed full");
                            finish(on_event, index, ItemOutcome::Failed(why), &mut outcomes);
                            continue;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(SubmitError::WorkerStopped) => {
                        waiting.pop_front();
                        let why = format!("the farm at {url} did not take the job (unreachable?)");
                        finish(on_event, index, ItemOutcome::Failed(why), &mut outcomes);
                    }
                    Err(e) => {
                        waiting.pop_front();
                        finish(
                            on_event,
                            index,
                            ItemOutcome::Failed(e.to_string()),
                            &mut outcomes,
                        );
                    }
                }
            }
            if in_flight.is_empty() && waiting.is_empty() {
                break;
            }
            if options
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                report.cancelled = true;
                for (id, (index, _)) in in_flight.drain() {
                    client.cancel(id);
                    let why = ItemOutcome::Failed("cancelled".into());
                    finish(on_event, index, why, &mut outcomes);
                }
                break;
            }
            if last_news.elapsed() >= farm.idle_timeout {
                let why = format!(
                    "the farm at {url} reported nothing for {} s (is a `texgen serve` worker \
                     running?); the job stays queued there",
                    farm.idle_timeout.as_secs()
                );
                for index in in_flight
                    .drain()
                    .map(|(_, (i, _))| i)
                    .chain(waiting.drain(..))
                {
                    finish(
                        on_event,
                        index,
                        ItemOutcome::Failed(why.clone()),
                        &mut outcomes,
                    );
                }
                break;
            }
            let Ok(event) = client.events().recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            last_news = Instant::now();
            match event {
                WorkerEvent::Progress {
                    id, step, total, ..
                } => {
                    if let Some(&(index, _)) = in_flight.get(&id) {
                        on_event(&BakeEvent::Step {
                            index,
                            name: &planned[index].item.name,
                            step,
                            total,
                        });
                    }
                }
                WorkerEvent::Finished {
                    id,
                    image,
                    seed,
                    truncated,
                    ..
                } => {
                    let Some((index, started)) = in_flight.remove(&id) else {
                        continue;
                    };
                    let entry = &planned[index];
                    let written = Written {
                        content_hash: entry.content_hash.clone().unwrap_or_default(),
                        model_identity: identity.clone(),
                        model_dir: options.model_dir.clone(),
                        seed,
                    };
                    let outcome = write_item(entry, &image, written, started, truncated)
                        .unwrap_or_else(|e| ItemOutcome::Failed(e.to_string()));
                    finish(on_event, index, outcome, &mut outcomes);
                }
                WorkerEvent::Failed { id, error } => {
                    if let Some((index, _)) = in_flight.remove(&id) {
                        finish(
                            on_event,
                            index,
                            ItemOutcome::Failed(error.to_string()),
                            &mut outcomes,
                        );
                    }
                }
                WorkerEvent::Cancelled { id } => {
                    if let Some((index, _)) = in_flight.remove(&id) {
                        let why = "cancelled on the farm".to_string();
                        finish(on_event, index, ItemOutcome::Failed(why), &mut outcomes);
                    }
                }
                _ => {}
            }
        }
    }
    for (index, outcome) in outcomes.into_iter().enumerate() {
        // Absent only after a cancel: like a local bake, the items not reached are left out.
        if let Some(outcome) = outcome {
            report
                .items
                .push((planned[index].item.name.clone(), outcome));
        }
    }
    Ok(report)
}
