//! `unet/config.json` read into a [`UNet2DConditionConfig`], after diffusers'
//! `ConfigMixin.from_config` for `UNet2DConditionModel.__init__`: every key checked, features
//! we do not implement refused by name, counts bounded before anything is built.

use super::*;

impl UNet2DConditionConfig {
    /// Builds the config from an already read `unet/config.json`. Errors as
    /// [`UNet2DConditionConfig::from_file`].
    pub(crate) fn from_json(j: &JsonConfig) -> crate::Result<Self> {
        let path = &j.path;
        for key in MUST_BE_NULL {
            j.refuse_unless(key, true, |_| false)?;
        }
        let is_str = |s: &'static str| move |v: &Value| v.as_str() == Some(s);
        let is_false = |v: &Value| v.as_bool() == Some(false);
        j.refuse_unless("time_embedding_type", true, is_str("positional"))?;
        j.refuse_unless("attention_type", true, is_str("default"))?;
        j.refuse_unless("resnet_time_scale_shift", true, is_str("default"))?;
        j.refuse_unless("act_fn", false, |v| {
            matches!(v.as_str(), Some("silu" | "swish"))
        })?;
        j.refuse_unless("dual_cross_attention", true, is_false)?;
        j.refuse_unless("class_embeddings_concat", true, is_false)?;
        j.refuse_unless("resnet_skip_time_act", true, is_false)?;
        j.refuse_unless("resnet_out_scale_factor", true, |v| v.as_f64() == Some(1.0))?;
        j.refuse_unless("mid_block_type", true, is_str("UNetMidBlock2DCrossAttn"))?;
        let has_mid_block =
            j.raw("mid_block_type").is_some() || !j.map().contains_key("mid_block_type");
        if j.map().get("norm_num_groups") == Some(&Value::Null) {
            return Err(j.unsupported("norm_num_groups", &Value::Null));
        }

        let block_out_channels: Vec<usize> =
            j.get_or("block_out_channels", vec![320, 640, 1280, 1280])?;
        let n = block_out_channels.len();
        if n == 0 {
            return Err(DiffusionError::config(
                path,
                "block_out_channels",
                "must not be empty",
            ));
        }
        let down_names: Vec<String> = j.get_or(
            "down_block_types",
            [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        let up_names: Vec<String> = j.get_or(
            "up_block_types",
            [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        let strip = |s: &str| s.strip_prefix("UNetRes").unwrap_or(s).to_string();
        let down_block_types = down_names
            .iter()
            .map(|s| match strip(s).as_str() {
                "CrossAttnDownBlock2D" => Ok(DownBlockType::CrossAttnDownBlock2D),
                "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
                _ => Err(j.unsupported("down_block_types", &Value::String(s.clone()))),
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let up_block_types = up_names
            .iter()
            .map(|s| match strip(s).as_str() {
                "CrossAttnUpBlock2D" => Ok(UpBlockType::CrossAttnUpBlock2D),
                "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
                _ => Err(j.unsupported("up_block_types", &Value::String(s.clone()))),
            })
            .collect::<crate::Result<Vec<_>>>()?;
        for (key, len) in [
            ("down_block_types", down_block_types.len()),
            ("up_block_types", up_block_types.len()),
        ] {
            if len != n {
                let reason = format!("has {len} entries but block_out_channels has {n}");
                return Err(DiffusionError::config(path, key, reason));
            }
        }

        let norm_num_groups: usize = j.get_or("norm_num_groups", 32)?;
        if norm_num_groups == 0 {
            return Err(DiffusionError::config(
                path,
                "norm_num_groups",
                "must be positive",
            ));
        }
        if n > MAX_LEVELS {
            let reason = format!("{n} levels is out of range (1..={MAX_LEVELS})");
            return Err(DiffusionError::config(path, "block_out_channels", reason));
        }
        if let Some(c) = block_out_channels.iter().find(|&&c| c > MAX_CHANNELS) {
            let reason = format!("{c} channels is out of range (1..={MAX_CHANNELS})");
            return Err(DiffusionError::config(path, "block_out_channels", reason));
        }
        if let Some(c) = block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % norm_num_groups != 0)
        {
            let reason = format!(
                "channel count {c} is not a positive multiple of norm_num_groups {norm_num_groups}"
            );
            return Err(DiffusionError::config(path, "block_out_channels", reason));
        }

        // `num_attention_heads or attention_head_dim` (diffusers' naming quirk).
        let heads_key = if j.raw("num_attention_heads").is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let num_attention_heads: Vec<usize> = j.per_block(heads_key, n, 8)?;
        let uses_attention = |i: usize| {
            down_block_types[i] == DownBlockType::CrossAttnDownBlock2D
                || up_block_types[n - 1 - i] == UpBlockType::CrossAttnUpBlock2D
                || (has_mid_block && i == n - 1)
        };
        for (i, (&heads, &c)) in num_attention_heads
            .iter()
            .zip(&block_out_channels)
            .enumerate()
        {
            if uses_attention(i) && (heads == 0 || c % heads != 0) {
                let reason = format!("{heads} heads do not divide the {c} channels of block {i}");
                return Err(DiffusionError::config(path, heads_key, reason));
            }
        }

        let cross_attention_dims: Vec<usize> = j.per_block("cross_attention_dim", n, 1280)?;
        let cross_attention_dim = cross_attention_dims[0];
        if cross_attention_dims
            .iter()
            .any(|&d| d != cross_attention_dim)
        {
            return Err(j.unsupported(
                "cross_attention_dim",
                j.raw("cross_attention_dim").unwrap_or(&Value::Null),
            ));
        }
        if let Some(Value::Array(items)) = j.raw("transformer_layers_per_block")
            && items.iter().any(Value::is_array)
        {
            return Err(j.unsupported(
                "transformer_layers_per_block",
                j.raw("transformer_layers_per_block").unwrap(),
            ));
        }

        let sample_size = match j.raw("sample_size") {
            None => 64,
            Some(Value::Array(hw)) if hw.len() == 2 && hw[0] == hw[1] => {
                j.parse("sample_size", &hw[0])?
            }
            Some(Value::Array(_)) => {
                return Err(j.unsupported("sample_size", j.raw("sample_size").unwrap()));
            }
            Some(v) => j.parse("sample_size", v)?,
        };
        if !(1..=512).contains(&sample_size) {
            return Err(DiffusionError::config(
                &j.path,
                "sample_size",
                format!("{sample_size} latents is out of range (1..=512)"),
            ));
        }
        let conv_in_kernel: usize = j.get_or("conv_in_kernel", 3)?;
        let conv_out_kernel: usize = j.get_or("conv_out_kernel", 3)?;
        for (key, k) in [
            ("conv_in_kernel", conv_in_kernel),
            ("conv_out_kernel", conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(DiffusionError::config(
                    path,
                    key,
                    format!("kernel {k} must be odd"),
                ));
            }
        }
        let time_embed_dim = j.get_or("time_embedding_dim", 4 * block_out_channels[0])?;
        let num_class_embeds: Option<usize> = j.opt("num_class_embeds")?;
        if let Some(n) = num_class_embeds
            && !(1..=100_000).contains(&n)
        {
            return Err(DiffusionError::config(
                path,
                "num_class_embeds",
                format!("{n} is out of range (1..=100000)"),
            ));
        }

        let cfg = Self {
            in_channels: j.get_or("in_channels", 4)?,
            out_channels: j.get_or("out_channels", 4)?,
            cross_attention_dim,
            sample_size,
            center_input_sample: j.get_or("center_input_sample", false)?,
            flip_sin_to_cos: j.get_or("flip_sin_to_cos", true)?,
            freq_shift: j.get_or("freq_shift", 0.0)?,
            down_block_types,
            up_block_types,
            has_mid_block,
            only_cross_attention: j.per_block("only_cross_attention", n, false)?,
            layers_per_block: j.per_block_count("layers_per_block", n, 2)?,
            downsample_padding: j.get_or("downsample_padding", 1)?,
            mid_block_scale_factor: j.get_or("mid_block_scale_factor", 1.0)?,
            norm_num_groups,
            norm_eps: j.get_or("norm_eps", 1e-5)?,
            transformer_layers_per_block: j.per_block_count(
                "transformer_layers_per_block",
                n,
                1,
            )?,
            num_attention_heads,
            use_linear_projection: j.get_or("use_linear_projection", false)?,
            upcast_attention: j.get_or("upcast_attention", false)?,
            conv_in_kernel,
            conv_out_kernel,
            time_embed_dim,
            addition_embed: TextTimeConfig::from_json(j)?,
            num_class_embeds,
            block_out_channels,
        };
        cfg.check_bounds(path)?;
        Ok(cfg)
    }
}
