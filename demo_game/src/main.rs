//! `cargo run --release -p demo_game [-- --help]`: the bevy_diffusion demo in a window.

use bevy::prelude::*;
use bevy::window::WindowResolution;
use bevy_diffusion::DiffusionPlugin;
use clap::Parser;
use demo_game::cli::Args;
use demo_game::material_view::MaterialViewPlugin;
use demo_game::scripted::ScriptedPlugin;
use demo_game::ui::DemoUiPlugin;

fn main() -> AppExit {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("demo_game: {e}");
        return AppExit::error();
    }
    let mut app = App::new();
    app.add_plugins(
        DefaultPlugins
            .set(WindowPlugin {
                primary_window: Some(Window {
                    title: "bevy_diffusion demo: your prompts become the world".into(),
                    resolution: WindowResolution::new(1280, 720),
                    resizable: false,
                    ..default()
                }),
                ..default()
            })
            // Pixel art: nearest-neighbour sampling for everything without its own sampler.
            .set(ImagePlugin::default_nearest()),
    )
    .add_plugins(DiffusionPlugin::new(args.diffusion_settings()))
    .add_plugins((
        args.demo_plugin(),
        DemoUiPlugin {
            model_label: args.model_label(),
        },
        MaterialViewPlugin,
    ));
    if let Some(run) = args.scripted_run() {
        app.add_plugins(ScriptedPlugin(run));
    }
    app.run()
}
