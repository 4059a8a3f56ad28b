//! How an [`InspectReport`] prints (`texgen inspect`'s output): components with sizes and
//! parameter counts, the scheduler, the tokenizer(s), the recommended settings, every problem.

use super::*;

// ---------------------------------------------------------------- printing

/// `1234567` -> `1,234,567`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1234567` -> `1.2 M`.
pub(super) fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

pub(super) fn bytes(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// Tensor-level problems shown per component before "... and N more".
pub(super) const SHOWN_TENSOR_PROBLEMS: usize = 10;

impl fmt::Display for InspectReport {
    /// The text `texgen inspect` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model folder  {}", self.dir.display())?;
        writeln!(f, "family        {}", self.family_label())?;
        if let Some(decoder) = self.decoder_label() {
            writeln!(f, "decoder       {decoder}")?;
        }
        if let Some(why) = &self.embedded {
            writeln!(f, "embedded      {why}")?;
        }
        if let Some(class) = &self.class_name {
            writeln!(f, "pipeline      {class}")?;
        }
        if let Some(id) = &self.identity {
            writeln!(f, "identity      {id}")?;
        }
        for c in &self.components {
            let name = c.kind.dir_name();
            let class = c.class_name.as_deref().unwrap_or("?");
            match &c.weights {
                None => writeln!(f, "{name:<13} {class}: no usable weights (see problems)")?,
                Some(path) => {
                    let dtypes = c
                        .dtypes
                        .iter()
                        .map(|(d, n)| {
                            if c.dtypes.len() == 1 {
                                d.clone()
                            } else {
                                format!("{d} ({})", human(*n))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let file = path
                        .strip_prefix(&self.dir)
                        .unwrap_or(path)
                        .display()
                        .to_string();
                    writeln!(
                        f,
                        "{name:<13} {class}: {} parameters ({}), {dtypes}, {} tensors in {file}{} \
                         ({}){}",
                        thousands(c.parameters),
                        human(c.parameters),
                        c.tensors,
                        if c.files > 1 {
                            format!(" + {} shards", c.files)
                        } else {
                            String::new()
                        },
                        bytes(c.bytes),
                        if c.fp16_variant { ", fp16 variant" } else { "" },
                    )?;
                    if !c.unused_tensors.is_empty() {
                        let shown: Vec<&str> = c
                            .unused_tensors
                            .iter()
                            .take(3)
                            .map(String::as_str)
                            .collect();
                        writeln!(
                            f,
                            "{:<13} note: {} tensor(s) the config does not use: {}{}",
                            "",
                            c.unused_tensors.len(),
                            shown.join(", "),
                            if c.unused_tensors.len() > 3 {
                                ", ..."
                            } else {
                                ""
                            }
                        )?;
                    }
                }
            }
        }
        if let Some(s) = &self.scheduler {
            let settings = s
                .settings
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                f,
                "scheduler     {} -> runs as {}{}: {settings}",
                s.class_name.as_deref().unwrap_or("(no _class_name)"),
                s.runs_as,
                if s.exact { "" } else { " (stand-in)" },
            )?;
        }
        if let Some(r) = &self.recommended {
            let show = |v: Option<String>, default: &str| v.unwrap_or_else(|| default.to_string());
            let source = match (r.is_empty(), self.recommended_from_family) {
                (_, true) => format!(
                    "{} defaults (no bevy_diffusion.json)",
                    self.family.map_or("family", ModelFamily::name)
                ),
                (true, false) => "none (no bevy_diffusion.json)".to_string(),
                (false, false) => "bevy_diffusion.json".to_string(),
            };
            let size = match (r.width, r.height) {
                (None, None) => "native".to_string(),
                (w, h) => format!(
                    "{}x{}",
                    show(w.map(|v| v.to_string()), "native"),
                    show(h.map(|v| v.to_string()), "native")
                ),
            };
            writeln!(
                f,
                "recommended   {source}: {} steps, guidance {}, scheduler {}, size {size}",
                show(r.num_inference_steps.map(|v| v.to_string()), "20"),
                show(r.guidance_scale.map(|v| v.to_string()), "7.5"),
                show(
                    r.scheduler.map(|k| format!("{k:?}")),
                    "the scheduler's class"
                ),
            )?;
        }
        if let Some(t) = &self.tokenizer {
            writeln!(
                f,
                "tokenizer     pad token {:?} (id {}), {} tokens per prompt, vocabulary {}",
                t.pad_token, t.pad_id, t.max_length, t.vocab_size
            )?;
        }
        match self.full_load {
            Some(true) => writeln!(f, "full load     ok")?,
            Some(false) => writeln!(f, "full load     FAILED (see problems)")?,
            None => {}
        }
        if self.problems.is_empty() {
            return writeln!(f, "problems      none");
        }
        writeln!(f, "problems      {}", self.problems.len())?;
        // Cap the tensor-level problems per file (a wrong config can mismatch hundreds).
        let mut shown_per_file: HashMap<&Path, usize> = HashMap::new();
        let mut hidden_per_file: BTreeMap<&Path, usize> = BTreeMap::new();
        for p in &self.problems {
            if let DiffusionError::MissingTensor { path, .. }
            | DiffusionError::ShapeMismatch { path, .. } = p
            {
                let shown = shown_per_file.entry(path).or_default();
                if *shown >= SHOWN_TENSOR_PROBLEMS {
                    *hidden_per_file.entry(path).or_default() += 1;
                    continue;
                }
                *shown += 1;
            }
            writeln!(f, "  - {p}")?;
        }
        for (path, n) in hidden_per_file {
            writeln!(
                f,
                "  - {}: ... and {n} more tensor problems",
                path.display()
            )?;
        }
        Ok(())
    }
}
