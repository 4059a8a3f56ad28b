//! Players, their themes, and what they changed: who is playing, which prompt each part of the
//! world gets, and which seed.
//!
//! Every part of the world is a [`Slot`] with a stable asset key (`world/floor`, `world/item/2`);
//! a player's seed for it is [`derive_seed`]`(player, key)`, so the same player gets the same
//! pixels after a restart (and the plugin's disk cache serves them without running the model).
//! Prompts come from [`PromptTemplate`]s filled with the player's attributes, unless the player
//! typed their own for that slot ([`SaveGame`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use bevy::prelude::*;
use bevy_diffusion::{GenerationRequest, PlayerProfile, PromptTemplate, derive_seed};
use serde::{Deserialize, Serialize};

/// Item places in the room.
pub const ITEM_SLOTS: usize = 6;

/// What a typed prompt is for (F1-F3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Target {
    /// The floor tiles (a seamless texture).
    #[default]
    Floor,
    /// The wall tiles (a seamless texture).
    Wall,
    /// An item placed in the room (a sprite with transparency).
    Item,
}

impl Target {
    /// All targets, in key order (F1, F2, F3).
    pub const ALL: [Target; 3] = [Target::Floor, Target::Wall, Target::Item];

    /// Lower-case name, as shown on screen.
    pub fn name(self) -> &'static str {
        match self {
            Target::Floor => "floor",
            Target::Wall => "wall",
            Target::Item => "item",
        }
    }
}

/// One part of the world that shows one generated image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Every floor tile.
    Floor,
    /// Every wall tile.
    Wall,
    /// Item place `n` (`0..ITEM_SLOTS`).
    Item(usize),
}

impl Slot {
    /// The floor, the wall and every item place.
    pub fn all() -> impl Iterator<Item = Slot> {
        [Slot::Floor, Slot::Wall]
            .into_iter()
            .chain((0..ITEM_SLOTS).map(Slot::Item))
    }

    /// The stable asset key the seed derives from (`world/floor`, `world/item/3`).
    pub fn key(self) -> String {
        match self {
            Slot::Floor => "world/floor".into(),
            Slot::Wall => "world/wall".into(),
            Slot::Item(n) => format!("world/item/{n}"),
        }
    }

    /// What the slot is (floor, wall or item).
    pub fn target(self) -> Target {
        match self {
            Slot::Floor => Target::Floor,
            Slot::Wall => Target::Wall,
            Slot::Item(_) => Target::Item,
        }
    }

    /// Textures tile (floor, wall); items are sprites.
    pub fn is_texture(self) -> bool {
        !matches!(self, Slot::Item(_))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Floor => f.write_str("floor"),
            Slot::Wall => f.write_str("wall"),
            Slot::Item(n) => write!(f, "item {}", n + 1),
        }
    }
}

/// The prompt templates every player's world is built from.
#[derive(Debug, Clone)]
pub struct WorldTemplates {
    /// The floor texture.
    pub floor: PromptTemplate,
    /// The wall texture.
    pub wall: PromptTemplate,
    /// The items placed at start-up, in item places `0..items.len()` (the other places fill up
    /// with the player's typed items).
    pub items: Vec<PromptTemplate>,
}

impl Default for WorldTemplates {
    fn default() -> Self {
        let t = |s: &str| PromptTemplate::parse(s).expect("built-in template parses");
        Self {
            floor: t("{theme} cobblestone floor"),
            wall: t("{theme} stone brick wall"),
            items: vec![
                t("a {colour} potion"),
                t("a {metal} sword"),
                t("a {metal} shield"),
                t("a {colour} gem"),
            ],
        }
    }
}

impl WorldTemplates {
    /// The template of `slot`, if it has one (typed-only item places have none).
    pub fn template(&self, slot: Slot) -> Option<&PromptTemplate> {
        match slot {
            Slot::Floor => Some(&self.floor),
            Slot::Wall => Some(&self.wall),
            Slot::Item(n) => self.items.get(n),
        }
    }
}

/// The two built-in players: `ann` (mossy dungeon) and `bob` (desert ruins).
pub fn default_players() -> Vec<PlayerProfile> {
    vec![
        PlayerProfile::new("ann")
            .with("theme", "mossy dark")
            .with("colour", "red")
            .with("metal", "iron"),
        PlayerProfile::new("bob")
            .with("theme", "sandy desert")
            .with("colour", "blue")
            .with("metal", "golden"),
    ]
}

/// The players, who is playing, and the templates their worlds come from.
#[derive(Resource, Debug, Clone)]
pub struct Players {
    /// Every player (Tab cycles through them).
    pub list: Vec<PlayerProfile>,
    /// Index of the active player in `list`.
    pub active: usize,
    /// The world's prompt templates.
    pub templates: WorldTemplates,
}

impl Default for Players {
    fn default() -> Self {
        Self {
            list: default_players(),
            active: 0,
            templates: WorldTemplates::default(),
        }
    }
}

impl Players {
    /// The active player.
    pub fn active(&self) -> &PlayerProfile {
        &self.list[self.active]
    }

    /// Makes the next player active (wrapping) and returns them.
    pub fn next_player(&mut self) -> &PlayerProfile {
        self.active = (self.active + 1) % self.list.len();
        self.active()
    }

    /// Makes the player with `id` active; false (and no change) when there is none.
    pub fn select(&mut self, id: &str) -> bool {
        match self.list.iter().position(|p| p.id == id) {
            Some(i) => {
                self.active = i;
                true
            }
            None => false,
        }
    }

    /// One line about the active player: `ann (theme: mossy dark, colour: red, metal: iron)`.
    pub fn describe_active(&self) -> String {
        let p = self.active();
        let attrs: Vec<String> = p
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("{} ({})", p.id, attrs.join(", "))
    }
}

/// Request parameters shared by every request of the demo.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct RequestSettings {
    /// Output side in pixels (0 = the model's native size).
    pub size: u32,
    /// Denoising steps (`None`: what the model recommends, e.g. 12 for the embedded model, else
    /// its family's default).
    pub steps: Option<usize>,
    /// Classifier-free guidance weight (`None`: what the model recommends, e.g. 4 for the
    /// embedded model, else its family's default).
    pub guidance: Option<f64>,
}

impl Default for RequestSettings {
    fn default() -> Self {
        Self {
            size: 0,
            steps: None,
            guidance: None,
        }
    }
}

/// A typed prompt as a template: `{theme}` and the player's other attributes work in it; text that
/// is not a valid template (a stray brace) is taken literally.
pub fn typed_template(text: &str) -> PromptTemplate {
    PromptTemplate::parse(text).unwrap_or_else(|_| {
        let escaped = text.replace('{', "{{").replace('}', "}}");
        PromptTemplate::parse(&escaped).expect("an escaped text parses")
    })
}

/// The request for `slot` of `player` with `prompt` (already filled): a seamless texture for the
/// floor and the wall, a sprite for items; seeded by [`derive_seed`]`(player, slot key)`.
pub fn slot_request(
    player: &PlayerProfile,
    slot: Slot,
    prompt: &str,
    settings: &RequestSettings,
) -> GenerationRequest {
    let base = if slot.is_texture() {
        GenerationRequest::texture(prompt)
    } else {
        GenerationRequest::sprite(prompt)
    };
    GenerationRequest {
        seed: derive_seed(&player.id, &slot.key()),
        player: Some(player.id.clone()),
        width: settings.size,
        height: settings.size,
        num_inference_steps: settings.steps,
        guidance_scale: settings.guidance,
        ..base
    }
}

/// What one player changed in their world: typed prompts per slot, and the item place their
/// next typed item goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerWorld {
    /// Slot key (`world/wall`) -> the prompt the player typed for it (attributes filled in).
    pub prompts: BTreeMap<String, String>,
    /// The item place the next typed item goes to (`None`: the first place without a template).
    pub next_item: Option<usize>,
}

/// Every player's [`PlayerWorld`], saved as JSON next to the image cache so that a restart shows
/// each player the world they left (the pixels then come from the plugin's disk cache).
#[derive(Resource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveGame {
    /// Player id -> their changes.
    pub players: BTreeMap<String, PlayerWorld>,
    /// Where it is saved (`None`: kept in memory only).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl SaveGame {
    /// The save at `path`; an absent or unreadable file is an empty save (with a warning for a
    /// corrupt one) that will be written to `path`.
    pub fn load(path: &Path) -> Self {
        let mut save = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<SaveGame>(&bytes).unwrap_or_else(|e| {
                warn!("ignoring the unreadable save {}: {e}", path.display());
                SaveGame::default()
            }),
            Err(_) => SaveGame::default(),
        };
        save.path = Some(path.to_path_buf());
        save
    }

    /// Writes the save (atomically: a temporary file, then a rename); no-op without a path.
    pub fn store(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)
    }

    /// The prompt `player` sees on `slot`: what they typed for it, else the slot's template filled
    /// with their attributes; `None` for an empty item place.
    pub fn prompt(
        &self,
        player: &PlayerProfile,
        templates: &WorldTemplates,
        slot: Slot,
    ) -> Option<String> {
        if let Some(typed) = self
            .players
            .get(&player.id)
            .and_then(|w| w.prompts.get(&slot.key()))
        {
            return Some(typed.clone());
        }
        let template = templates.template(slot)?;
        match player.prompt(template) {
            Ok(prompt) => Some(prompt),
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// Records that `player` typed `prompt` for `slot`.
    pub fn set_prompt(&mut self, player: &str, slot: Slot, prompt: &str) {
        self.players
            .entry(player.into())
            .or_default()
            .prompts
            .insert(slot.key(), prompt.into());
    }

    /// The item place `player`'s next typed item goes to, and advances it: first the places
    /// without a template, then round the room replacing the oldest.
    pub fn take_item_slot(&mut self, player: &str, templates: &WorldTemplates) -> Slot {
        let world = self.players.entry(player.into()).or_default();
        let n = world
            .next_item
            .unwrap_or(templates.items.len().min(ITEM_SLOTS))
            % ITEM_SLOTS;
        world.next_item = Some((n + 1) % ITEM_SLOTS);
        Slot::Item(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy_diffusion::{AssetKind, Tiling};

    #[test]
    fn slots_have_stable_keys_and_kinds() {
        let all: Vec<Slot> = Slot::all().collect();
        assert_eq!(all.len(), 2 + ITEM_SLOTS);
        assert_eq!(Slot::Floor.key(), "world/floor");
        assert_eq!(Slot::Item(3).key(), "world/item/3");
        let ann = &default_players()[0];
        let settings = RequestSettings::default();
        let floor = slot_request(ann, Slot::Floor, "x", &settings);
        assert_eq!((floor.kind, floor.tiling), (AssetKind::Texture, Tiling::XY));
        assert_eq!(floor.seed, derive_seed("ann", "world/floor"));
        let item = slot_request(ann, Slot::Item(1), "y", &settings);
        assert_eq!((item.kind, item.tiling), (AssetKind::Sprite, Tiling::None));
        assert_eq!(item.player.as_deref(), Some("ann"));
    }

    #[test]
    fn prompts_come_from_templates_unless_typed() {
        let players = Players::default();
        let ann = players.active();
        let mut save = SaveGame::default();
        let t = &players.templates;
        assert_eq!(
            save.prompt(ann, t, Slot::Floor).as_deref(),
            Some("mossy dark cobblestone floor")
        );
        assert_eq!(
            save.prompt(ann, t, Slot::Item(0)).as_deref(),
            Some("a red potion")
        );
        assert_eq!(save.prompt(ann, t, Slot::Item(5)), None);
        save.set_prompt("ann", Slot::Floor, "lava rocks");
        assert_eq!(
            save.prompt(ann, t, Slot::Floor).as_deref(),
            Some("lava rocks")
        );
        let bob = &players.list[1];
        assert_eq!(
            save.prompt(bob, t, Slot::Floor).as_deref(),
            Some("sandy desert cobblestone floor")
        );
    }

    #[test]
    fn typed_items_fill_free_places_then_cycle() {
        let t = WorldTemplates::default();
        let mut save = SaveGame::default();
        let got: Vec<Slot> = (0..4).map(|_| save.take_item_slot("ann", &t)).collect();
        assert_eq!(
            got,
            vec![Slot::Item(4), Slot::Item(5), Slot::Item(0), Slot::Item(1)]
        );
        assert_eq!(save.take_item_slot("bob", &t), Slot::Item(4));
    }

    #[test]
    fn typed_text_fills_attributes_or_stays_literal() {
        let ann = &default_players()[0];
        assert_eq!(
            ann.prompt(&typed_template("{theme} lava")).unwrap(),
            "mossy dark lava"
        );
        assert_eq!(ann.prompt(&typed_template("a } b {")).unwrap(), "a } b {");
    }

    #[test]
    fn the_save_round_trips_on_disk() {
        let dir = std::env::temp_dir().join(format!("demo_game_save_{}", std::process::id()));
        let path = dir.join("save.json");
        let mut save = SaveGame::load(&path);
        assert!(save.players.is_empty());
        save.set_prompt("bob", Slot::Wall, "glass wall");
        save.take_item_slot("bob", &WorldTemplates::default());
        save.store().unwrap();
        assert_eq!(SaveGame::load(&path), save);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(SaveGame::load(&path).players.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
