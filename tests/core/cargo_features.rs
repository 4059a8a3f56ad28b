//! The workspace compiles Bevy once: the Bevy features the plugin's windowed examples take as a
//! dev-dependency (`plugin/Cargo.toml`) are exactly the demo game's (`demo_game/Cargo.toml`), so
//! `cargo test --workspace` and `cargo build -p bevy_diffusion --examples` reuse one build of
//! Bevy's renderer instead of compiling a second, differently-featured one (many CI minutes).

use std::collections::BTreeSet;
use std::path::Path;

/// The `features = [...]` of the `bevy = {...}` entry after the line `section` (e.g.
/// `[dev-dependencies]`) in a Cargo.toml.
fn bevy_features(manifest: &str, section: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let body = text
        .split_once(&format!("\n{section}\n"))
        .unwrap_or_else(|| panic!("{manifest}: no {section}"))
        .1;
    let entry = body
        .lines()
        .take_while(|l| !l.starts_with('['))
        .skip_while(|l| !l.starts_with("bevy = "))
        .map(|l| l.split_once('#').map_or(l, |(code, _comment)| code))
        .collect::<Vec<_>>()
        .join("\n");
    let list = entry
        .split_once("features = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .unwrap_or_else(|| panic!("{manifest}: no bevy features under {section}"))
        .0;
    list.split(',')
        .map(|f| f.trim().trim_matches('"').to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn windowed_examples_use_the_demo_games_bevy_features() {
    let demo = bevy_features("../demo_game/Cargo.toml", "[dependencies]");
    let examples = bevy_features("../plugin/Cargo.toml", "[dev-dependencies]");
    assert!(
        demo.contains("bevy_winit") && demo.contains("bevy_sprite_render"),
        "{demo:?}"
    );
    assert_eq!(
        examples, demo,
        "plugin/Cargo.toml's [dev-dependencies] bevy features must equal demo_game's"
    );
}
