//! `demo_game`: bevy_diffusion's showcase. A small room whose floor, walls and items are
//! generated from the active player's prompts at start-up; the player types new prompts (F1
//! floor, F2 wall, F3 item, Enter), switches player (Tab) and cancels (Esc), while a progress
//! panel shows each request's preview and the frame time stays flat.
//!
//! The game logic is this library, testable headless (`MinimalPlugins + AssetPlugin +
//! ImagePlugin + DiffusionPlugin + DemoPlugin`, no window or renderer); the binary adds the
//! window, the UI ([`ui::DemoUiPlugin`]) and the scripted mode ([`scripted::ScriptedPlugin`]).
//!
//! | module | what |
//! |---|---|
//! | [`profiles`] | players, themes, prompt templates, slots and their seeds, the save |
//! | [`world`] | the room's tiles and items, which image each shows, requests in flight |
//! | [`input`] | the prompt field, keys -> [`input::DemoAction`]s -> the plugin |
//! | [`frame_stats`] | frame time p50/p99/max and FPS over the last second |
//! | [`scripted`] | `--screenshot`: wait for start-up, run N frames, save a screenshot, exit |
//! | [`ui`] | camera, side panel, progress rows, help line |
//! | [`material_view`] | a lit 3D inset wearing a generated PBR material under a moving light (F4) |
//! | [`cli`] | command-line flags |

pub mod cli;
pub mod frame_stats;
pub mod input;
pub mod material_view;
pub mod profiles;
pub mod scripted;
pub mod ui;
pub mod world;

use bevy::input::keyboard::KeyboardInput;
use bevy::prelude::*;
use bevy_diffusion::DiffusionSystems;

use frame_stats::FrameStats;
use input::{DemoAction, PromptInput};
use profiles::{Players, RequestSettings, SaveGame};
use world::{Jobs, Notice, WorldSlots};

/// The demo's game-logic systems in `Update` (input, actions, tracking, applying images).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DemoSet {
    /// Keyboard -> actions -> requests; plugin messages -> jobs -> tiles.
    Logic,
}

/// The game logic: the room, the players, the prompt field and the requests. Needs
/// `DiffusionPlugin` (and so `AssetPlugin` + `ImagePlugin`); no window or renderer.
#[derive(Debug, Clone, Default)]
pub struct DemoPlugin {
    /// The players and their templates (the active one's world loads at start-up).
    pub players: Players,
    /// Size, steps and guidance of every request.
    pub requests: RequestSettings,
    /// Typed prompts from earlier runs (and where to save new ones).
    pub save: SaveGame,
}

impl Plugin for DemoPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.players.clone())
            .insert_resource(self.requests.clone())
            .insert_resource(self.save.clone())
            .init_resource::<PromptInput>()
            .init_resource::<WorldSlots>()
            .init_resource::<Jobs>()
            .init_resource::<Notice>()
            .init_resource::<FrameStats>()
            .add_message::<DemoAction>()
            // Written by Bevy's InputPlugin in a real game; registered here so the logic also
            // runs (and is tested) without it.
            .add_message::<KeyboardInput>()
            .add_systems(
                Startup,
                (world::spawn_world, world::load_initial_world).chain(),
            )
            .add_systems(
                PreUpdate,
                world::pixel_art_samplers.after(DiffusionSystems::Poll),
            )
            .add_systems(
                Update,
                (
                    input::read_keyboard,
                    input::handle_actions,
                    world::track_generation,
                    world::apply_slots,
                )
                    .chain()
                    .in_set(DemoSet::Logic),
            )
            .add_systems(Last, frame_stats::record_frame_time);
    }
}
