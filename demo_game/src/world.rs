//! The room: floor and wall tiles and item places, which images they show, and the requests in
//! flight that will change them.
//!
//! - [`WorldSlots`]: per [`Slot`], the image every entity of that slot shows.
//! - [`Jobs`]: the requests in flight (slot, prompt, progress, handle), fed by the plugin's
//!   messages in [`track_generation`].
//! - [`load_world`]: requests every slot of the active player (at start-up and on Tab). Those
//!   requests are shown at once, so their previews fill the room while they denoise. A typed
//!   prompt's request instead replaces the slot's image when it finishes (its preview shows in the
//!   progress panel meanwhile).

use std::collections::{BTreeMap, BTreeSet};

use bevy::image::{ImageFilterMode, ImageSampler, ImageSamplerDescriptor};
use bevy::prelude::*;
use bevy_diffusion::{
    Diffusion, GenerationCancelled, GenerationFailed, GenerationFinished, GenerationProgress,
    GenerationStarted, RequestId,
};

use crate::profiles::{ITEM_SLOTS, Players, RequestSettings, SaveGame, Slot, slot_request};

/// Side of a floor or wall tile on screen, in pixels (the default model's 64x64 texture drawn
/// 1:1; a larger `--size` is drawn scaled down).
pub const TILE: f32 = 64.0;
/// Side of an item sprite on screen, in pixels (the default model's 64x64 sprite at exactly 2x:
/// a sprite leaves a margin around its object, which drawn 1:1 looks lost on a 64-px tile).
pub const ITEM_SIZE: f32 = 128.0;
/// Room width in tiles, walls included.
pub const ROOM_COLS: i32 = 13;
/// Room height in tiles, walls included.
pub const ROOM_ROWS: i32 = 9;
/// Centre of the room in world space (the room sits left of the side panel).
pub const ROOM_CENTER: Vec2 = Vec2::new(-208.0, -8.0);
/// Tint of the wall tiles: a little darker than the floor, so the room reads as a room whatever
/// the textures are.
pub const WALL_TINT: Color = Color::srgb(0.72, 0.72, 0.76);
/// Item places as (column, row) of the room grid, row 0 at the top. The lower row starts at
/// column 5: the lit-material inset (`material_view`) covers the room's lower-left corner.
pub const ITEM_CELLS: [(i32, i32); ITEM_SLOTS] = [(3, 2), (6, 2), (9, 2), (5, 6), (7, 6), (9, 6)];

/// A floor or wall tile; shows the image of its slot.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile(pub Slot);

/// An item place; shows the image of `Slot::Item(index)` (hidden while that slot is empty).
#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct ItemPlace {
    /// Item place index.
    pub index: usize,
    /// Where it rests (it bobs around this point).
    pub home: Vec2,
}

/// The centre of grid cell (`col`, `row`) in world space (row 0 at the top).
pub fn cell_center(col: i32, row: i32) -> Vec2 {
    let x = (col as f32 - (ROOM_COLS - 1) as f32 / 2.0) * TILE;
    let y = ((ROOM_ROWS - 1) as f32 / 2.0 - row as f32) * TILE;
    ROOM_CENTER + Vec2::new(x, y)
}

/// Every tile of the room: walls on the border, floor inside.
pub fn room_tiles() -> Vec<(Slot, Vec2)> {
    let mut tiles = Vec::new();
    for row in 0..ROOM_ROWS {
        for col in 0..ROOM_COLS {
            let border = row == 0 || col == 0 || row == ROOM_ROWS - 1 || col == ROOM_COLS - 1;
            let slot = if border { Slot::Wall } else { Slot::Floor };
            tiles.push((slot, cell_center(col, row)));
        }
    }
    tiles
}

/// What a slot shows now.
#[derive(Debug, Clone, Default)]
pub struct SlotView {
    /// The image on every entity of the slot (`None`: an empty item place).
    pub shown: Option<Handle<Image>>,
    /// The prompt of that image.
    pub prompt: Option<String>,
    /// The request that image came from (a finished typed request replaces the image only if it
    /// is newer).
    pub request: Option<RequestId>,
}

/// Per slot, the image its entities show.
#[derive(Resource, Debug, Clone, Default)]
pub struct WorldSlots(pub BTreeMap<Slot, SlotView>);

impl WorldSlots {
    /// The image `slot` shows, if any.
    pub fn shown(&self, slot: Slot) -> Option<&Handle<Image>> {
        self.0.get(&slot).and_then(|v| v.shown.as_ref())
    }
}

/// Why a request was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Part of loading a player's world; shown at once (previews fill the room).
    World,
    /// A typed prompt; replaces the slot's image when it finishes.
    Typed,
}

/// A request in flight.
#[derive(Debug, Clone)]
pub struct Job {
    /// The slot it is for.
    pub slot: Slot,
    /// Its prompt.
    pub prompt: String,
    /// The player it is for.
    pub player: String,
    /// The image it fills (previews, then the result).
    pub handle: Handle<Image>,
    /// Denoising steps done (0 while queued).
    pub step: usize,
    /// Denoising steps in all.
    pub total: usize,
    /// Why it was made.
    pub origin: Origin,
    /// True once the worker started it.
    pub started: bool,
}

impl Job {
    /// Progress in `0.0..=1.0`.
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            self.step as f32 / self.total as f32
        }
    }
}

/// The requests in flight and what became of the first world load.
#[derive(Resource, Debug, Clone, Default)]
pub struct Jobs {
    /// Requests in flight, oldest first.
    pub pending: BTreeMap<RequestId, Job>,
    /// The start-up requests that have not ended yet (`None` before start-up requested them).
    pub startup_left: Option<BTreeSet<RequestId>>,
    /// Why start-up requests failed.
    pub startup_failures: Vec<String>,
    /// Requests finished, failed and cancelled so far.
    pub finished: usize,
    /// See `finished`.
    pub failed: usize,
    /// See `finished`.
    pub cancelled: usize,
}

impl Jobs {
    /// True once every start-up request has ended (finished, failed or cancelled).
    pub fn startup_done(&self) -> bool {
        self.startup_left.as_ref().is_some_and(|s| s.is_empty())
    }

    fn ended(&mut self, id: RequestId) -> Option<Job> {
        if let Some(left) = &mut self.startup_left {
            left.remove(&id);
        }
        self.pending.remove(&id)
    }
}

/// The last thing worth telling the player (a refusal, a failure, a cancel).
#[derive(Resource, Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice(pub String);

/// Spawns the room's tiles and item places (images come from [`WorldSlots`]).
pub fn spawn_world(mut commands: Commands, mut images: ResMut<Assets<Image>>) {
    for (slot, at) in room_tiles() {
        commands.spawn((
            Tile(slot),
            Sprite {
                custom_size: Some(Vec2::splat(TILE)),
                color: if slot == Slot::Wall {
                    WALL_TINT
                } else {
                    Color::WHITE
                },
                ..default()
            },
            Transform::from_translation(at.extend(0.0)),
        ));
    }
    let shadow = images.add(shadow_image());
    for (index, &(col, row)) in ITEM_CELLS.iter().enumerate() {
        let home = cell_center(col, row);
        commands.spawn((
            ItemPlace { index, home },
            Sprite {
                custom_size: Some(Vec2::splat(ITEM_SIZE)),
                ..default()
            },
            Transform::from_translation(home.extend(1.0)),
            Visibility::Hidden,
            // A soft shadow under the item (hidden with it), so a cut-out sprite reads as lying
            // on the floor.
            children![(
                Sprite {
                    image: shadow.clone(),
                    custom_size: Some(Vec2::new(ITEM_SIZE * 0.7, ITEM_SIZE * 0.22)),
                    ..default()
                },
                Transform::from_xyz(0.0, -ITEM_SIZE * 0.4, -0.5),
            )],
        ));
    }
}

/// A 32x8 black ellipse whose alpha fades out towards the edge.
pub fn shadow_image() -> Image {
    let (w, h) = (32u32, 8u32);
    let mut data = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            let dx = (x as f32 + 0.5) / w as f32 * 2.0 - 1.0;
            let dy = (y as f32 + 0.5) / h as f32 * 2.0 - 1.0;
            let d = (dx * dx + dy * dy).sqrt();
            let alpha = ((1.0 - d).clamp(0.0, 1.0) * 1.6).min(1.0) * 150.0;
            data.extend_from_slice(&[0, 0, 0, alpha as u8]);
        }
    }
    Image::new(
        bevy::render::render_resource::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        bevy::render::render_resource::TextureDimension::D2,
        data,
        bevy::render::render_resource::TextureFormat::Rgba8UnormSrgb,
        bevy::asset::RenderAssetUsages::default(),
    )
}

/// Submits one request for `slot` and records it in `jobs`; a refusal goes to `notice`.
#[allow(clippy::too_many_arguments)]
pub fn submit_slot(
    diffusion: &mut Diffusion,
    players: &Players,
    settings: &RequestSettings,
    jobs: &mut Jobs,
    notice: &mut Notice,
    slot: Slot,
    prompt: String,
    origin: Origin,
) -> Option<(RequestId, Handle<Image>)> {
    let player = players.active();
    let request = slot_request(player, slot, &prompt, settings);
    // Unknown (0) until the first progress message when the model's recommendation fills the
    // steps in.
    let total = request.num_inference_steps.unwrap_or(0);
    match diffusion.submit(request) {
        Ok(job) => {
            jobs.pending.insert(
                job.id,
                Job {
                    slot,
                    prompt,
                    player: player.id.clone(),
                    handle: job.handle.clone(),
                    step: 0,
                    total,
                    origin,
                    started: false,
                },
            );
            Some((job.id, job.handle))
        }
        Err(reason) => {
            notice.0 = format!("{slot} not requested: {reason}");
            warn!("{}", notice.0);
            None
        }
    }
}

/// Requests every slot of the active player's world (template or typed prompt, the player's
/// seeds) and shows the new handles at once. Returns the request ids.
#[allow(clippy::too_many_arguments)]
pub fn load_world(
    diffusion: &mut Diffusion,
    players: &Players,
    save: &SaveGame,
    settings: &RequestSettings,
    slots: &mut WorldSlots,
    jobs: &mut Jobs,
    notice: &mut Notice,
) -> Vec<RequestId> {
    let mut ids = Vec::new();
    slots.0.clear();
    for slot in Slot::all() {
        let Some(prompt) = save.prompt(players.active(), &players.templates, slot) else {
            continue;
        };
        if let Some((id, handle)) = submit_slot(
            diffusion,
            players,
            settings,
            jobs,
            notice,
            slot,
            prompt.clone(),
            Origin::World,
        ) {
            slots.0.insert(
                slot,
                SlotView {
                    shown: Some(handle),
                    prompt: Some(prompt),
                    request: Some(id),
                },
            );
            ids.push(id);
        }
    }
    ids
}

/// Start-up: requests the active player's world and remembers those requests (the scripted
/// mode waits for them).
#[allow(clippy::too_many_arguments)]
pub fn load_initial_world(
    mut diffusion: Diffusion,
    players: Res<Players>,
    save: Res<SaveGame>,
    settings: Res<RequestSettings>,
    mut slots: ResMut<WorldSlots>,
    mut jobs: ResMut<Jobs>,
    mut notice: ResMut<Notice>,
) {
    let ids = load_world(
        &mut diffusion,
        &players,
        &save,
        &settings,
        &mut slots,
        &mut jobs,
        &mut notice,
    );
    info!(
        "requested {} images for {}",
        ids.len(),
        players.describe_active()
    );
    jobs.startup_left = Some(ids.into_iter().collect());
}

/// The plugin's messages -> [`Jobs`] progress, and finished typed requests -> [`WorldSlots`]
/// (and the [`SaveGame`], so the world comes back after a restart).
#[allow(clippy::too_many_arguments)]
pub fn track_generation(
    mut started: MessageReader<GenerationStarted>,
    mut progress: MessageReader<GenerationProgress>,
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut cancelled: MessageReader<GenerationCancelled>,
    mut jobs: ResMut<Jobs>,
    mut slots: ResMut<WorldSlots>,
    mut save: ResMut<SaveGame>,
    mut notice: ResMut<Notice>,
    players: Res<Players>,
) {
    for m in started.read() {
        if let Some(job) = jobs.pending.get_mut(&m.id) {
            job.started = true;
        }
    }
    for m in progress.read() {
        if let Some(job) = jobs.pending.get_mut(&m.id) {
            job.started = true;
            job.step = m.step;
            job.total = m.total;
        }
    }
    for m in finished.read() {
        let Some(job) = jobs.ended(m.id) else {
            continue;
        };
        jobs.finished += 1;
        if job.origin != Origin::Typed {
            continue;
        }
        save.set_prompt(&job.player, job.slot, &job.prompt);
        if let Err(e) = save.store() {
            warn!("could not save the world: {e}");
        }
        if job.player != players.active().id {
            continue;
        }
        let view = slots.0.entry(job.slot).or_default();
        if view.request.is_none_or(|shown| shown < m.id) {
            *view = SlotView {
                shown: Some(job.handle.clone()),
                prompt: Some(job.prompt.clone()),
                request: Some(m.id),
            };
        }
        notice.0 = format!("{}: \"{}\" done", job.slot, job.prompt);
    }
    for m in failed.read() {
        let Some(job) = jobs.ended(m.id) else {
            continue;
        };
        jobs.failed += 1;
        forget_empty_item(&mut slots, m.id, &job);
        if jobs.startup_left.is_some() && job.origin == Origin::World {
            let reason = format!("{} (\"{}\") failed: {}", job.slot, job.prompt, m.reason);
            jobs.startup_failures.push(reason);
        }
        notice.0 = format!("{} failed: {}", job.slot, m.reason);
    }
    for m in cancelled.read() {
        if let Some(job) = jobs.ended(m.id) {
            jobs.cancelled += 1;
            forget_empty_item(&mut slots, m.id, &job);
        }
    }
}

/// An item place whose world request ended without a single preview stays empty (rather than
/// showing a transparent placeholder over its shadow). Textures keep their placeholder or last
/// preview, like the plugin's images.
fn forget_empty_item(slots: &mut WorldSlots, id: RequestId, job: &Job) {
    if matches!(job.slot, Slot::Item(_))
        && job.step == 0
        && slots
            .0
            .get(&job.slot)
            .is_some_and(|v| v.request == Some(id))
    {
        slots.0.remove(&job.slot);
    }
}

/// Puts each slot's image on every tile and item place of that slot (only when
/// [`WorldSlots`] changed).
pub fn apply_slots(
    slots: Res<WorldSlots>,
    mut tiles: Query<(&Tile, &mut Sprite), Without<ItemPlace>>,
    mut items: Query<(&ItemPlace, &mut Sprite, &mut Visibility), Without<Tile>>,
) {
    for (tile, mut sprite) in &mut tiles {
        if let Some(handle) = slots.shown(tile.0)
            && sprite.image != *handle
        {
            sprite.image = handle.clone();
        }
    }
    for (place, mut sprite, mut visibility) in &mut items {
        match slots.shown(Slot::Item(place.index)) {
            Some(handle) => {
                if sprite.image != *handle {
                    sprite.image = handle.clone();
                }
                visibility.set_if_neq(Visibility::Inherited);
            }
            None => {
                visibility.set_if_neq(Visibility::Hidden);
            }
        }
    }
}

/// The sampler the demo wants on `current`: nearest-neighbour filtering, so an image drawn at
/// an integer scale stays crisp pixel art (the default model's sprites are drawn at 2x), keeping
/// the plugin's address modes (textures repeat).
pub fn pixel_art_sampler(current: &ImageSampler) -> ImageSampler {
    let base = match current {
        ImageSampler::Descriptor(d) => d.clone(),
        ImageSampler::Default => ImageSamplerDescriptor::default(),
    };
    ImageSampler::Descriptor(ImageSamplerDescriptor {
        mag_filter: ImageFilterMode::Nearest,
        min_filter: ImageFilterMode::Nearest,
        mipmap_filter: ImageFilterMode::Nearest,
        ..base
    })
}

/// Every image the demo shows or waits for gets the pixel-art sampler (the plugin replaces the
/// image, sampler included, on each preview and at the end; this runs right after it).
pub fn pixel_art_samplers(
    jobs: Res<Jobs>,
    slots: Res<WorldSlots>,
    mut images: ResMut<Assets<Image>>,
) {
    let handles = jobs
        .pending
        .values()
        .map(|j| &j.handle)
        .chain(slots.0.values().filter_map(|v| v.shown.as_ref()));
    for handle in handles {
        let Some(image) = images.get(handle) else {
            continue;
        };
        let want = pixel_art_sampler(&image.sampler);
        if image.sampler != want
            && let Some(mut image) = images.get_mut(handle)
        {
            image.sampler = want;
        }
    }
}

/// Items bob gently (a moving thing makes a dropped frame visible).
pub fn bob_items(time: Res<Time>, mut items: Query<(&ItemPlace, &mut Transform)>) {
    let t = time.elapsed_secs();
    for (place, mut transform) in &mut items {
        let phase = place.index as f32 * 1.3;
        transform.translation.y = place.home.y + (t * 2.0 + phase).sin() * 4.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_has_walls_around_a_floor() {
        let tiles = room_tiles();
        assert_eq!(tiles.len(), (ROOM_COLS * ROOM_ROWS) as usize);
        let walls = tiles.iter().filter(|(s, _)| *s == Slot::Wall).count();
        assert_eq!(walls, (2 * ROOM_COLS + 2 * (ROOM_ROWS - 2)) as usize);
        // Neighbouring tiles touch exactly: no gap, no overlap.
        assert_eq!(cell_center(1, 0).x - cell_center(0, 0).x, TILE);
        assert_eq!(cell_center(0, 0).y - cell_center(0, 1).y, TILE);
        for (col, row) in ITEM_CELLS {
            assert!(col > 0 && row > 0 && col < ROOM_COLS - 1 && row < ROOM_ROWS - 1);
        }
    }

    #[test]
    fn the_pixel_art_sampler_keeps_repeat() {
        let repeat = bevy_diffusion::bevy_plugin::sampler_for(bevy_diffusion::AssetKind::Texture);
        let ImageSampler::Descriptor(d) = pixel_art_sampler(&repeat) else {
            panic!("explicit sampler")
        };
        assert_eq!(d.mag_filter, ImageFilterMode::Nearest);
        assert_eq!(d.address_mode_u, bevy::image::ImageAddressMode::Repeat);
        assert_eq!(d.address_mode_v, bevy::image::ImageAddressMode::Repeat);
        assert_eq!(
            pixel_art_sampler(&pixel_art_sampler(&repeat)),
            pixel_art_sampler(&repeat)
        );
    }
}
