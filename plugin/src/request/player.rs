//! Per-player content: prompts filled from a player's attributes, and seeds derived from the
//! player and the asset, so every player gets their own textures and gets the same ones again
//! after a restart (and on every platform).
//!
//! ```
//! use bevy_diffusion::request::player::{PlayerProfile, PromptTemplate};
//! let template = PromptTemplate::parse("{theme} stone wall, {{seamless}}")?;
//! let ann = PlayerProfile::new("ann").with("theme", "mossy");
//! let request = ann.texture_request(&template, "castle/wall")?;
//! assert_eq!(request.prompt, "mossy stone wall, {seamless}");
//! assert_eq!(request.player.as_deref(), Some("ann"));
//! assert_eq!(request.seed, bevy_diffusion::request::player::derive_seed("ann", "castle/wall"));
//! # Ok::<(), bevy_diffusion::request::player::TemplateError>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::request::GenerationRequest;

/// Why a template could not be parsed or filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template names an attribute the player does not have.
    #[error(
        "prompt template `{template}` needs attribute `{name}`, which the player does not have"
    )]
    MissingAttribute {
        /// The template as written.
        template: String,
        /// The missing attribute.
        name: String,
    },
    /// A `{` without its `}`.
    #[error(
        "prompt template `{template}`: `{{` at byte {at} is never closed (write `{{{{` for a literal brace)"
    )]
    Unclosed {
        /// The template as written.
        template: String,
        /// Byte offset of the `{`.
        at: usize,
    },
    /// A `}` that closes nothing.
    #[error(
        "prompt template `{template}`: stray `}}` at byte {at} (write `}}}}` for a literal brace)"
    )]
    StrayClose {
        /// The template as written.
        template: String,
        /// Byte offset of the `}`.
        at: usize,
    },
    /// `{}` or a name with characters other than letters, digits, `_`, `-` and `.`.
    #[error("prompt template `{template}`: bad attribute name `{name}` at byte {at}")]
    BadName {
        /// The template as written.
        template: String,
        /// The name between the braces.
        name: String,
        /// Byte offset of the `{`.
        at: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Attribute(String),
}

/// A prompt with `{attribute}` placeholders, e.g. `"{theme} stone wall"`.
///
/// `{{` and `}}` stand for literal braces. Names are letters, digits, `_`, `-` and `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    source: String,
    parts: Vec<Part>,
}

impl PromptTemplate {
    /// Parses `source`; errors name the position of a malformed placeholder.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, n)| n == '{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, n)| n == '}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => {
                    return Err(TemplateError::StrayClose {
                        template: source.into(),
                        at,
                    });
                }
                '{' => {
                    let rest = &source[at + 1..];
                    let Some(len) = rest.find('}') else {
                        return Err(TemplateError::Unclosed {
                            template: source.into(),
                            at,
                        });
                    };
                    let name = &rest[..len];
                    let valid = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
                    if name.is_empty() || !name.chars().all(valid) {
                        return Err(TemplateError::BadName {
                            template: source.into(),
                            name: name.into(),
                            at,
                        });
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Attribute(name.into()));
                    // Skip the name and the closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self {
            source: source.into(),
            parts,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The attribute names the template uses, in order of first use.
    pub fn attributes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Attribute(name) = part
                && !names.contains(&name.as_str())
            {
                names.push(name);
            }
        }
        names
    }

    /// Fills the placeholders from `attributes`; the first missing one is a
    /// [`TemplateError::MissingAttribute`] naming it.
    pub fn render(&self, attributes: &BTreeMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Attribute(name) => match attributes.get(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        return Err(TemplateError::MissingAttribute {
                            template: self.source.clone(),
                            name: name.clone(),
                        });
                    }
                },
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for PromptTemplate {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, TemplateError> {
        Self::parse(s)
    }
}

/// A player as far as content generation cares: a stable id and named attributes
/// (theme, faction, favourite colour...) that fill [`PromptTemplate`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerProfile {
    /// Stable player id (account id, save-slot name): seeds and queue quotas key on it.
    pub id: String,
    /// Attribute name -> value.
    pub attributes: BTreeMap<String, String>,
}

impl PlayerProfile {
    /// A profile with no attributes.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            attributes: BTreeMap::new(),
        }
    }

    /// Sets an attribute (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// `template` filled from this player's attributes.
    pub fn prompt(&self, template: &PromptTemplate) -> Result<String, TemplateError> {
        template.render(&self.attributes)
    }

    /// This player's seed for `asset_key` ([`derive_seed`]).
    pub fn seed(&self, asset_key: &str) -> u64 {
        derive_seed(&self.id, asset_key)
    }

    /// `base` with its prompt filled from `template`, its seed derived from this player and
    /// `asset_key`, and `player` set to this player (for quotas and cancel-all).
    pub fn request(
        &self,
        base: GenerationRequest,
        template: &PromptTemplate,
        asset_key: &str,
    ) -> Result<GenerationRequest, TemplateError> {
        Ok(GenerationRequest {
            prompt: self.prompt(template)?,
            seed: self.seed(asset_key),
            player: Some(self.id.clone()),
            ..base
        })
    }

    /// A seamless texture request ([`GenerationRequest::texture`]) for this player.
    pub fn texture_request(
        &self,
        template: &PromptTemplate,
        asset_key: &str,
    ) -> Result<GenerationRequest, TemplateError> {
        self.request(GenerationRequest::texture(""), template, asset_key)
    }

    /// A sprite request ([`GenerationRequest::sprite`]) for this player.
    pub fn sprite_request(
        &self,
        template: &PromptTemplate,
        asset_key: &str,
    ) -> Result<GenerationRequest, TemplateError> {
        self.request(GenerationRequest::sprite(""), template, asset_key)
    }
}

/// A seed for `asset_key` of `player_id`: blake3 in key-derivation mode over both strings
/// (length-prefixed, so `("ab", "c")` and `("a", "bc")` differ), first 8 bytes little-endian.
///
/// Pure function of its inputs: the same on every run, machine and platform.
pub fn derive_seed(player_id: &str, asset_key: &str) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("bevy_diffusion player asset seed v1");
    for s in [player_id, asset_key] {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fills_placeholders_and_escapes() {
        let t = PromptTemplate::parse("{theme} stone wall, {{not a name}} {theme}-ish {colour}")
            .unwrap();
        assert_eq!(t.attributes(), vec!["theme", "colour"]);
        let out = t
            .render(&attrs(&[("theme", "mossy"), ("colour", "green")]))
            .unwrap();
        assert_eq!(out, "mossy stone wall, {not a name} mossy-ish green");
        assert_eq!(
            PromptTemplate::parse("plain")
                .unwrap()
                .render(&BTreeMap::new())
                .unwrap(),
            "plain"
        );
        assert_eq!(
            PromptTemplate::parse("{{}}")
                .unwrap()
                .render(&BTreeMap::new())
                .unwrap(),
            "{}"
        );
        assert_eq!(
            PromptTemplate::parse("ä{x}ö")
                .unwrap()
                .render(&attrs(&[("x", "ü")]))
                .unwrap(),
            "äüö"
        );
    }

    #[test]
    fn a_missing_attribute_is_named() {
        let t = PromptTemplate::parse("{theme} {faction} banner").unwrap();
        let e = t.render(&attrs(&[("theme", "dark")])).unwrap_err();
        assert_eq!(
            e,
            TemplateError::MissingAttribute {
                template: "{theme} {faction} banner".into(),
                name: "faction".into()
            }
        );
        assert!(e.to_string().contains("`faction`"), "{e}");
    }

    #[test]
    fn malformed_templates_are_typed_errors() {
        assert!(matches!(
            PromptTemplate::parse("a {theme"),
            Err(TemplateError::Unclosed { at: 2, .. })
        ));
        assert!(matches!(
            PromptTemplate::parse("a } b"),
            Err(TemplateError::StrayClose { at: 2, .. })
        ));
        assert!(matches!(
            PromptTemplate::parse("{}"),
            Err(TemplateError::BadName { .. })
        ));
        assert!(matches!(
            PromptTemplate::parse("{two words}"),
            Err(TemplateError::BadName { .. })
        ));
    }

    #[test]
    fn seeds_are_stable_and_distinct() {
        // Fixed value: changing it breaks every player's saved content.
        assert_eq!(derive_seed("ann", "castle/wall"), 0x9211_dcd7_759c_6bcb);
        assert_eq!(
            derive_seed("ann", "castle/wall"),
            derive_seed("ann", "castle/wall")
        );
        assert_ne!(
            derive_seed("ann", "castle/wall"),
            derive_seed("bob", "castle/wall")
        );
        assert_ne!(
            derive_seed("ann", "castle/wall"),
            derive_seed("ann", "castle/floor")
        );
        assert_ne!(
            derive_seed("ab", "c"),
            derive_seed("a", "bc"),
            "length-prefixed"
        );
    }

    #[test]
    fn profile_builds_requests() {
        let t = PromptTemplate::parse("{theme} sword").unwrap();
        let p = PlayerProfile::new("ann").with("theme", "ice");
        let r = p.sprite_request(&t, "weapon/sword").unwrap();
        assert_eq!(r.prompt, "ice sword");
        assert_eq!(r.kind, crate::request::AssetKind::Sprite);
        assert_eq!(r.player.as_deref(), Some("ann"));
        assert_eq!(r.seed, p.seed("weapon/sword"));
        let r = p.texture_request(&t, "x").unwrap();
        assert_eq!(r.tiling, crate::Tiling::XY);
        assert!(PlayerProfile::new("bob").texture_request(&t, "x").is_err());
    }
}
