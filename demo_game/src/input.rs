//! The keyboard: a one-line prompt field and the demo's keys, turned into [`DemoAction`]s that
//! [`handle_actions`] carries out through the plugin.
//!
//! | key | does |
//! |---|---|
//! | letters, digits, space, punctuation | type into the prompt |
//! | Backspace | delete the last character |
//! | Enter | generate the prompt for the selected target |
//! | F1 / F2 / F3 | target: floor / wall / item |
//! | Tab | next player (their world is requested) |
//! | Esc | cancel the active player's pending requests |

use bevy::input::ButtonState;
use bevy::input::keyboard::{Key, KeyboardInput};
use bevy::prelude::*;
use bevy_diffusion::Diffusion;

use crate::profiles::{Players, RequestSettings, SaveGame, Target, typed_template};
use crate::world::{Jobs, Notice, Origin, WorldSlots, load_world, submit_slot};

/// Longest prompt the field takes, in characters.
pub const MAX_PROMPT_CHARS: usize = 100;

/// The prompt field and the selected target.
#[derive(Resource, Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptInput {
    /// What the player has typed so far.
    pub text: String,
    /// What Enter generates for.
    pub target: Target,
}

/// What the player asked for.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub enum DemoAction {
    /// Generate `prompt` (a template: `{theme}` works) for `target`.
    Submit {
        /// Floor, wall or item.
        target: Target,
        /// The typed text.
        prompt: String,
    },
    /// Cancel the active player's pending requests.
    Cancel,
    /// Switch to the next player and request their world.
    NextPlayer,
}

impl PromptInput {
    /// Applies one key press (or auto-repeat) to the field; returns the action it asks for.
    pub fn press(&mut self, key: &Key, repeat: bool) -> Option<DemoAction> {
        match key {
            Key::Enter if !repeat => {
                let prompt = self.text.trim().to_string();
                self.text.clear();
                (!prompt.is_empty()).then_some(DemoAction::Submit {
                    target: self.target,
                    prompt,
                })
            }
            Key::Backspace => {
                self.text.pop();
                None
            }
            Key::Escape if !repeat => Some(DemoAction::Cancel),
            Key::Tab if !repeat => Some(DemoAction::NextPlayer),
            Key::F1 => {
                self.target = Target::Floor;
                None
            }
            Key::F2 => {
                self.target = Target::Wall;
                None
            }
            Key::F3 => {
                self.target = Target::Item;
                None
            }
            Key::Space => {
                self.push(" ");
                None
            }
            Key::Character(s) => {
                self.push(s);
                None
            }
            _ => None,
        }
    }

    fn push(&mut self, s: &str) {
        for c in s.chars().filter(|c| !c.is_control()) {
            if self.text.chars().count() >= MAX_PROMPT_CHARS {
                break;
            }
            self.text.push(c);
        }
    }
}

/// Keyboard messages -> the prompt field and [`DemoAction`]s.
pub fn read_keyboard(
    mut keys: MessageReader<KeyboardInput>,
    mut input: ResMut<PromptInput>,
    mut actions: MessageWriter<DemoAction>,
) {
    for key in keys.read() {
        if key.state != ButtonState::Pressed {
            continue;
        }
        if let Some(action) = input.press(&key.logical_key, key.repeat) {
            actions.write(action);
        }
    }
}

/// Carries out [`DemoAction`]s: submit a typed prompt, cancel, switch player.
#[allow(clippy::too_many_arguments)]
pub fn handle_actions(
    mut actions: MessageReader<DemoAction>,
    mut diffusion: Diffusion,
    mut players: ResMut<Players>,
    mut save: ResMut<SaveGame>,
    settings: Res<RequestSettings>,
    mut slots: ResMut<WorldSlots>,
    mut jobs: ResMut<Jobs>,
    mut notice: ResMut<Notice>,
) {
    for action in actions.read() {
        match action {
            DemoAction::Submit { target, prompt } => {
                let player = players.active().clone();
                let prompt = match player.prompt(&typed_template(prompt)) {
                    Ok(filled) => filled,
                    Err(e) => {
                        notice.0 = e.to_string();
                        continue;
                    }
                };
                let slot = match target {
                    Target::Floor => crate::profiles::Slot::Floor,
                    Target::Wall => crate::profiles::Slot::Wall,
                    Target::Item => save.take_item_slot(&player.id, &players.templates),
                };
                if submit_slot(
                    &mut diffusion,
                    &players,
                    &settings,
                    &mut jobs,
                    &mut notice,
                    slot,
                    prompt.clone(),
                    Origin::Typed,
                )
                .is_some()
                {
                    notice.0 = format!("{slot}: generating \"{prompt}\"");
                }
            }
            DemoAction::Cancel => {
                let player = players.active().id.clone();
                let ids: Vec<_> = jobs
                    .pending
                    .iter()
                    .filter(|(_, j)| j.player == player)
                    .map(|(&id, _)| id)
                    .collect();
                let n = ids.into_iter().filter(|&id| diffusion.cancel(id)).count();
                notice.0 = match n {
                    0 => "nothing to cancel".into(),
                    1 => "cancelled 1 request".into(),
                    n => format!("cancelled {n} requests"),
                };
            }
            DemoAction::NextPlayer => {
                let old = players.active().id.clone();
                let cancelled = diffusion.cancel_player(&old);
                players.next_player();
                let ids = load_world(
                    &mut diffusion,
                    &players,
                    &save,
                    &settings,
                    &mut slots,
                    &mut jobs,
                    &mut notice,
                );
                notice.0 = format!(
                    "now playing {}: {} images requested{}",
                    players.active().id,
                    ids.len(),
                    if cancelled > 0 {
                        format!(", {cancelled} of {old}'s cancelled")
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> Key {
        Key::Character(s.into())
    }

    #[test]
    fn typing_editing_and_submitting() {
        let mut input = PromptInput::default();
        for k in [ch("L"), ch("a"), ch("v"), ch("a"), Key::Space, ch("x")] {
            assert_eq!(input.press(&k, false), None);
        }
        assert_eq!(input.text, "Lava x");
        input.press(&Key::Backspace, false);
        input.press(&Key::Backspace, true);
        assert_eq!(input.text, "Lava");
        input.press(&Key::F2, false);
        assert_eq!(
            input.press(&Key::Enter, false),
            Some(DemoAction::Submit {
                target: Target::Wall,
                prompt: "Lava".into()
            })
        );
        assert_eq!(input.text, "");
        assert_eq!(input.press(&Key::Enter, false), None, "empty: no request");
        input.press(&Key::Backspace, false);
        assert_eq!(input.text, "");
    }

    #[test]
    fn keys_map_to_actions_and_targets() {
        let mut input = PromptInput::default();
        assert_eq!(input.press(&Key::Escape, false), Some(DemoAction::Cancel));
        assert_eq!(input.press(&Key::Tab, false), Some(DemoAction::NextPlayer));
        assert_eq!(input.press(&Key::Tab, true), None, "held Tab: one switch");
        input.press(&Key::F3, false);
        assert_eq!(input.target, Target::Item);
        input.press(&Key::F1, false);
        assert_eq!(input.target, Target::Floor);
        input.press(&ch("\u{7f}"), false);
        assert_eq!(input.text, "", "control characters are ignored");
        for _ in 0..MAX_PROMPT_CHARS + 10 {
            input.press(&ch("a"), true);
        }
        assert_eq!(input.text.chars().count(), MAX_PROMPT_CHARS);
    }
}
