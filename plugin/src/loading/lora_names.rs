//! LoRA tensor names → the model's own weight names, for both common namings.
//!
//! - **kohya-ss** (`lora_unet_<path>`, `lora_te_<path>`, SDXL `lora_te1_`/`lora_te2_`; tensors
//!   `.lora_down.weight`, `.lora_up.weight`, `.alpha`): `<path>` is a module path with every `.`
//!   replaced by `_`. The reverse is ambiguous (`down_blocks`, `to_q`, `self_attn`, ... contain
//!   `_` too), so [`ModuleIndex`] builds the forward map from the model's own weight names and
//!   looks the kohya name up in it. SDXL kohya files name UNet blocks the SGM/LDM way
//!   (`input_blocks_4_1_…`, `middle_block_1_…`, `output_blocks_2_2_conv`, resnet
//!   `in_layers_2`/`emb_layers_1`/`out_layers_3`/`skip_connection`); [`sgm_to_diffusers`]
//!   translates those block prefixes first, as diffusers'
//!   `lora_conversion_utils._maybe_map_sgm_blocks_to_diffusers` and `_convert_unet_lora_key` do,
//!   but with the block structure read off the model's weights instead of `layers_per_block`.
//! - **diffusers / PEFT** (`unet.<path>.lora_A.weight` / `.lora_B.weight`, `text_encoder.`,
//!   `text_encoder_2.`; also the older `.lora.down/.lora.up` and
//!   `<attn>.processor.to_q_lora.down.weight` spellings): `<path>` is the diffusers module path.
//!   Text-encoder paths are accepted with or without `text_model.` (transformers ≥ 5 writes them
//!   flat; diffusers accepts both).
//! - PEFT alphas live in the header metadata ([`PeftAlphas`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::error::{DiffusionError, Result};

mod sgm;
pub use sgm::sgm_to_diffusers;

/// Which model component a LoRA module patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraComponent {
    /// `unet/` (kohya `lora_unet_`, PEFT `unet.`).
    Unet,
    /// `text_encoder/` (kohya `lora_te_` or SDXL `lora_te1_`, PEFT `text_encoder.`).
    TextEncoder,
    /// `text_encoder_2/` of SDXL (kohya `lora_te2_`, PEFT `text_encoder_2.`).
    TextEncoder2,
}

impl LoraComponent {
    /// The component's folder name in a diffusers layout.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// What one LoRA tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraRole {
    /// `lora_down` / `lora_A`: [rank, in] or [rank, in, kh, kw].
    Down,
    /// `lora_up` / `lora_B`: [out, rank] or [out, rank, 1, 1].
    Up,
    /// kohya's 0-dim `alpha`.
    Alpha,
}

/// A module name as the LoRA file spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleName {
    /// kohya: the module path with `.` → `_`, prefix (`lora_unet_`, ...) removed.
    Kohya(String),
    /// diffusers/PEFT: the dotted module path, component prefix (`unet.`, ...) removed.
    Dotted(String),
}

/// One parsed LoRA tensor key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraKey {
    /// The component it patches.
    pub component: LoraComponent,
    /// The module inside it.
    pub module: ModuleName,
    /// down, up or alpha.
    pub role: LoraRole,
}

const KOHYA_PREFIXES: [(&str, LoraComponent); 4] = [
    ("lora_unet_", LoraComponent::Unet),
    ("lora_te1_", LoraComponent::TextEncoder),
    ("lora_te2_", LoraComponent::TextEncoder2),
    ("lora_te_", LoraComponent::TextEncoder),
];
const DOTTED_PREFIXES: [(&str, LoraComponent); 3] = [
    ("unet.", LoraComponent::Unet),
    ("text_encoder_2.", LoraComponent::TextEncoder2),
    ("text_encoder.", LoraComponent::TextEncoder),
];
const SUFFIXES: [(&str, LoraRole); 7] = [
    (".lora_down.weight", LoraRole::Down),
    (".lora_up.weight", LoraRole::Up),
    (".lora_A.weight", LoraRole::Down),
    (".lora_B.weight", LoraRole::Up),
    (".lora.down.weight", LoraRole::Down),
    (".lora.up.weight", LoraRole::Up),
    (".alpha", LoraRole::Alpha),
];

/// Parses one tensor key of a LoRA file; `None` for a key of neither naming (or of a LoRA kind
/// we do not merge, e.g. LoHa `hada_w1_a` or DoRA `dora_scale`), which the caller reports.
pub fn parse_key(key: &str) -> Option<LoraKey> {
    if let Some((prefix, component)) = KOHYA_PREFIXES.iter().find(|(p, _)| key.starts_with(p)) {
        let rest = &key[prefix.len()..];
        let (stem, role) = split_suffix(rest)?;
        if stem.is_empty() || stem.contains('.') {
            return None;
        }
        return Some(LoraKey {
            component: *component,
            module: ModuleName::Kohya(stem.to_string()),
            role,
        });
    }
    let (prefix, component) = DOTTED_PREFIXES.iter().find(|(p, _)| key.starts_with(p))?;
    let rest = &key[prefix.len()..];
    let (stem, role) = match split_suffix(rest) {
        Some(found) => found,
        None => old_attn_processor(rest)?,
    };
    (!stem.is_empty()).then(|| LoraKey {
        component: *component,
        module: ModuleName::Dotted(stem.to_string()),
        role,
    })
}

fn split_suffix(rest: &str) -> Option<(String, LoraRole)> {
    SUFFIXES
        .iter()
        .find_map(|(s, role)| rest.strip_suffix(s).map(|stem| (stem.to_string(), *role)))
}

/// diffusers' pre-PEFT attention-processor spelling:
/// `….attn1.processor.to_q_lora.down.weight` → `….attn1.to_q` (`to_out_lora` → `to_out.0`).
fn old_attn_processor(rest: &str) -> Option<(String, LoraRole)> {
    let (stem, role) = if let Some(s) = rest.strip_suffix(".down.weight") {
        (s, LoraRole::Down)
    } else {
        (rest.strip_suffix(".up.weight")?, LoraRole::Up)
    };
    let (attn, proj) = stem.rsplit_once(".processor.")?;
    let proj = proj.strip_suffix("_lora")?;
    let proj = if proj == "to_out" { "to_out.0" } else { proj };
    Some((format!("{attn}.{proj}"), role))
}

/// One weight of the model that a LoRA module can patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetWeight {
    /// The tensor name in the component's weight file (`<module path>.weight`).
    pub name: String,
    /// Its shape: [out, in] (Linear) or [out, in, kh, kw] (Conv2d).
    pub shape: Vec<usize>,
}

/// The weights of one component, indexed by dotted module path and by kohya name.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    dotted: HashMap<String, TargetWeight>,
    /// kohya name (path with `_`) → dotted path.
    kohya: HashMap<String, String>,
    /// UNet block structure for SGM names: per down block (resnets, has downsampler), per up
    /// block (resnets, has attentions).
    down_blocks: Vec<(usize, bool)>,
    up_blocks: Vec<(usize, bool)>,
}

impl ModuleIndex {
    /// Indexes the 2-D and 4-D `*.weight` tensors of a component's weight file(s) (`tensors`:
    /// name → shape). Text-encoder paths get an alias with (or without) `text_model.`.
    pub fn new<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>) -> Self {
        let mut index = Self::default();
        let mut resnets: BTreeMap<(bool, usize), BTreeSet<usize>> = BTreeMap::new();
        let mut flags: BTreeSet<(bool, usize, &str)> = BTreeSet::new();
        for (name, shape) in tensors {
            let Some(path) = name.strip_suffix(".weight") else {
                continue;
            };
            if !matches!(shape.len(), 2 | 4) {
                continue;
            }
            let target = TargetWeight {
                name: name.to_string(),
                shape: shape.to_vec(),
            };
            let mut aliases = vec![path.to_string()];
            match path.strip_prefix("text_model.") {
                Some(flat) => aliases.push(flat.to_string()),
                None if path.starts_with("encoder.layers.") => {
                    aliases.push(format!("text_model.{path}"))
                }
                None => {}
            }
            for alias in aliases {
                index.kohya.insert(alias.replace('.', "_"), alias.clone());
                index.dotted.insert(alias, target.clone());
            }
            // Block structure (for SGM-named kohya files).
            let parts: Vec<&str> = path.split('.').collect();
            if let [blocks @ ("down_blocks" | "up_blocks"), b, inner, l, ..] = parts[..] {
                let (Ok(b), up) = (b.parse::<usize>(), blocks == "up_blocks") else {
                    continue;
                };
                match (inner, l.parse::<usize>()) {
                    ("resnets", Ok(l)) => {
                        resnets.entry((up, b)).or_default().insert(l);
                    }
                    ("downsamplers" | "attentions", _) => {
                        flags.insert((up, b, inner));
                    }
                    _ => {}
                }
            }
        }
        for ((up, b), layers) in resnets {
            let n = layers.len();
            if up {
                let attn = flags.contains(&(true, b, "attentions"));
                fill(&mut index.up_blocks, b, (n, attn));
            } else {
                let down = flags.contains(&(false, b, "downsamplers"));
                fill(&mut index.down_blocks, b, (n, down));
            }
        }
        index
    }

    /// The weight that `module` (of this component) patches, if the model has it.
    pub fn resolve(&self, module: &ModuleName) -> Option<&TargetWeight> {
        match module {
            ModuleName::Dotted(path) => self.dotted.get(path),
            ModuleName::Kohya(name) => {
                let path = match self.kohya.get(name) {
                    Some(path) => Some(path),
                    None => sgm_to_diffusers(name, &self.down_blocks, &self.up_blocks)
                        .and_then(|n| self.kohya.get(&n)),
                };
                path.and_then(|p| self.dotted.get(p))
            }
        }
    }
}

fn fill(blocks: &mut Vec<(usize, bool)>, b: usize, value: (usize, bool)) {
    if blocks.len() <= b {
        blocks.resize(b + 1, (0, false));
    }
    blocks[b] = value;
}

/// PEFT adapter metadata (`__metadata__["lora_adapter_metadata"]`, as diffusers'
/// `save_lora_weights` writes it): per component prefix, `lora_alpha`, `alpha_pattern`,
/// `use_rslora`.
#[derive(Debug, Default)]
pub struct PeftAlphas(serde_json::Map<String, serde_json::Value>);

impl PeftAlphas {
    /// Parses the metadata JSON (`None`: no metadata, alpha = rank everywhere).
    ///
    /// # Errors
    /// [`DiffusionError::InvalidLora`] for metadata that is not a JSON object, DoRA, or a
    /// `lora_alpha` / `alpha_pattern` value that is not a finite number (or `use_rslora` not a
    /// bool), naming the key.
    pub fn from_metadata(json: Option<&String>, path: &Path) -> Result<Self> {
        let Some(json) = json else {
            return Ok(Self::default());
        };
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            invalid_lora(
                path,
                "__metadata__.lora_adapter_metadata",
                format!("not JSON: {e}"),
            )
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(invalid_lora(
                path,
                "__metadata__.lora_adapter_metadata",
                "not a JSON object",
            ));
        };
        for (k, v) in &map {
            if k.ends_with(".use_dora") && v.as_bool() == Some(true) {
                return Err(invalid_lora(path, k, "DoRA LoRAs are not supported"));
            }
            // The fields `alpha` reads must have their JSON types: a wrong one would otherwise
            // fall back to alpha = rank and apply the LoRA at another strength without a word.
            let key = |what: &str| format!("__metadata__.lora_adapter_metadata.{k}{what}");
            let finite = |v: &serde_json::Value| v.as_f64().is_some_and(f64::is_finite);
            if k.ends_with(".lora_alpha") && !v.is_null() && !finite(v) {
                return Err(invalid_lora(
                    path,
                    &key(""),
                    format!("is {v}, not a finite number"),
                ));
            }
            if k.ends_with(".use_rslora") && !v.is_null() && !v.is_boolean() {
                return Err(invalid_lora(
                    path,
                    &key(""),
                    format!("is {v}, not true or false"),
                ));
            }
            if k.ends_with(".alpha_pattern") && !v.is_null() {
                let Some(pattern) = v.as_object() else {
                    return Err(invalid_lora(
                        path,
                        &key(""),
                        format!("is {v}, not an object"),
                    ));
                };
                if let Some((m, a)) = pattern.iter().find(|(_, a)| !finite(a)) {
                    return Err(invalid_lora(
                        path,
                        &key(&format!(".{m}")),
                        format!("is {a}, not a finite number"),
                    ));
                }
            }
        }
        Ok(Self(map))
    }

    /// (alpha, use_rslora) of `module` (dotted path), as diffusers/PEFT read them: an
    /// `alpha_pattern` key equal to the path or ending it after a `.` wins over `lora_alpha`;
    /// without metadata alpha = rank.
    pub fn alpha(&self, component: LoraComponent, module: &str, rank: usize) -> (f64, bool) {
        let get = |field: &str| self.0.get(&format!("{}.{field}", component.dir_name()));
        let rslora = get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
        let flat = module.strip_prefix("text_model.").unwrap_or(module);
        let pattern = get("alpha_pattern")
            .and_then(|p| p.as_object())
            .and_then(|p| {
                p.iter().find_map(|(k, v)| {
                    let hit = [module, flat]
                        .iter()
                        .any(|m| *m == k || m.ends_with(&format!(".{k}")));
                    hit.then(|| v.as_f64()).flatten()
                })
            });
        let alpha = pattern.or_else(|| get("lora_alpha").and_then(|v| v.as_f64()));
        (alpha.unwrap_or(rank as f64), rslora)
    }
}

/// [`DiffusionError::InvalidLora`] naming the LoRA file, the key and why.
pub(crate) fn invalid_lora(path: &Path, key: &str, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::InvalidLora {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}
