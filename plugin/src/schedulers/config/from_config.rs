//! [`SchedulerConfig`] read from `scheduler/scheduler_config.json`, after diffusers'
//! `ConfigMixin.from_config`: every key typed and range-checked, `_use_default_values` honoured.

use super::*;

impl SchedulerConfig {
    /// Reads and parses `path` (a diffusers `scheduler_config.json` of any scheduler class).
    ///
    /// Errors: [`DiffusionError::Io`]; [`DiffusionError::InvalidConfig`] (not JSON, a value of
    /// the wrong type or range) and [`DiffusionError::UnsupportedConfig`] (a `beta_schedule`,
    /// `prediction_type`, `timestep_spacing` or `final_sigmas_type` we do not know), naming the
    /// file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config = JsonConfig::read(path)?;
        Self::from_value(&config.to_value(), path)
    }

    /// Parses the text of a `scheduler_config.json`; `path` is only named in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let config = JsonConfig::parse_str(text, path)?;
        Self::from_value(&config.to_value(), path)
    }

    /// Builds from an already parsed JSON object (e.g. references.json
    /// `cases.<case>.scheduler_config`); `path` is only named in errors. Non-finite numbers may
    /// be given as the strings `"-Infinity"`, `"Infinity"`, `"NaN"` (see [`parse_lenient_json`]).
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| DiffusionError::config(path, "<json>", "expected a JSON object"))?;
        let used_defaults: Vec<&str> = match obj.get("_use_default_values") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fields = Fields {
            obj,
            path,
            used_defaults,
        };
        let class_name = fields.string("_class_name")?;
        let trained_betas = match fields.get("trained_betas") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| number(v).filter(|b| b.is_finite() && *b >= 0.0 && *b < 1.0))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| {
                        DiffusionError::config(
                            path,
                            "trained_betas",
                            "expected an array of numbers in [0, 1)",
                        )
                    })?,
            ),
            Some(other) => {
                return Err(DiffusionError::config(
                    path,
                    "trained_betas",
                    format!("expected null or an array of numbers, found {other}"),
                ));
            }
        };
        let unimplemented = UNIMPLEMENTED_KEYS
            .iter()
            .filter_map(|k| fields.get(k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let config = Self {
            path: path.to_path_buf(),
            class_name,
            num_train_timesteps: fields.count("num_train_timesteps", 1)?,
            beta_start: fields.finite("beta_start")?,
            beta_end: fields.finite("beta_end")?,
            beta_schedule: fields.choice(
                "beta_schedule",
                &[
                    ("linear", BetaSchedule::Linear),
                    ("scaled_linear", BetaSchedule::ScaledLinear),
                    ("squaredcos_cap_v2", BetaSchedule::SquaredCosCapV2),
                ],
            )?,
            trained_betas,
            steps_offset: fields.count("steps_offset", 0)?,
            prediction_type: fields.choice(
                "prediction_type",
                &[
                    ("epsilon", PredictionType::Epsilon),
                    ("v_prediction", PredictionType::VPrediction),
                    ("sample", PredictionType::Sample),
                ],
            )?,
            timestep_spacing: fields.choice(
                "timestep_spacing",
                &[
                    ("leading", TimestepSpacing::Leading),
                    ("linspace", TimestepSpacing::Linspace),
                    ("trailing", TimestepSpacing::Trailing),
                ],
            )?,
            set_alpha_to_one: fields.boolean("set_alpha_to_one")?,
            clip_sample: fields.boolean("clip_sample")?,
            clip_sample_range: fields.finite("clip_sample_range")?,
            rescale_betas_zero_snr: fields.boolean("rescale_betas_zero_snr")?,
            thresholding: fields.boolean("thresholding")?,
            use_karras_sigmas: fields.boolean("use_karras_sigmas")?,
            final_sigmas_type: fields.choice(
                "final_sigmas_type",
                &[
                    ("zero", FinalSigmasType::Zero),
                    ("sigma_min", FinalSigmasType::SigmaMin),
                ],
            )?,
            sigma_min: fields.finite("sigma_min")?,
            sigma_max: fields.finite("sigma_max")?,
            lower_order_final: fields.boolean("lower_order_final")?,
            euler_at_final: fields.boolean("euler_at_final")?,
            lambda_min_clipped: fields.number("lambda_min_clipped")?,
            original_inference_steps: fields.count("original_inference_steps", 1)?,
            timestep_scaling: fields.finite("timestep_scaling")?,
            unimplemented,
        };
        config.check_ranges()?;
        Ok(config)
    }

    pub(super) fn check_ranges(&self) -> Result<()> {
        let bad =
            |field: &str, reason: String| Err(DiffusionError::config(&self.path, field, reason));
        for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if let Some(v) = v
                && !(0.0..1.0).contains(&v)
            {
                return bad(field, format!("{v} is not in [0, 1)"));
            }
        }
        if let (Some(betas), Some(t)) = (&self.trained_betas, self.num_train_timesteps)
            && betas.len() != t
        {
            return bad(
                "trained_betas",
                format!("has {} entries but num_train_timesteps is {t}", betas.len()),
            );
        }
        if let Some(v) = self.lambda_min_clipped
            && v.is_nan()
        {
            return bad("lambda_min_clipped", "is NaN".into());
        }
        Ok(())
    }
}

/// Typed access to the keys of one config object, honouring `_use_default_values`.
pub(super) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    used_defaults: Vec<&'a str>,
}

impl Fields<'_> {
    /// The value of `key`, `None` when absent, `null`, or listed in `_use_default_values`.
    fn get(&self, key: &str) -> Option<&Value> {
        if self.used_defaults.contains(&key) {
            return None;
        }
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, expected: &str, found: &Value) -> DiffusionError {
        DiffusionError::config(
            self.path,
            key,
            format!("expected {expected}, found {found}"),
        )
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| number(v).ok_or_else(|| self.err(key, "a number", v)))
            .transpose()
    }

    fn finite(&self, key: &str) -> Result<Option<f64>> {
        match self.number(key)? {
            Some(x) if !x.is_finite() => {
                Err(self.err(key, "a finite number", &Value::from(x.to_string())))
            }
            other => Ok(other),
        }
    }

    fn count(&self, key: &str, min: u64) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                match v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|x| x.fract() == 0.0 && *x >= 0.0)
                        .map(|x| x as u64)
                }) {
                    Some(n) if n >= min && n <= 1 << 24 => Ok(n as usize),
                    _ => Err(self.err(key, &format!("an integer >= {min}"), v)),
                }
            })
            .transpose()
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.err(key, "true or false", v)))
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(key, "a string", v))
            })
            .transpose()
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let s = v
            .as_str()
            .ok_or_else(|| self.err(key, &format!("one of {names:?}"), v))?;
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, t)) => Ok(Some(*t)),
            None => Err(DiffusionError::UnsupportedConfig {
                path: self.path.to_path_buf(),
                field: key.into(),
                value: format!("{v} (supported: {})", names.join(", ")),
            }),
        }
    }
}

/// A JSON number, or one of the strings `"Infinity"`, `"-Infinity"`, `"NaN"` that
/// [`parse_lenient_json`] turns Python's bare tokens into.
pub(super) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ => None,
        },
        _ => None,
    }
}
