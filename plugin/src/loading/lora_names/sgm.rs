//! SGM/LDM UNet block names (SDXL kohya files) → diffusers module names.

/// Translates an SGM/LDM-named kohya UNet module (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`)
/// into the diffusers one with `_` (`down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`).
/// `down_blocks[b]` = (resnets, has a downsampler), `up_blocks[b]` = (resnets, has attentions),
/// as in the model. `None` when `name` is not SGM-named or points outside the model's blocks.
pub fn sgm_to_diffusers(
    name: &str,
    down_blocks: &[(usize, bool)],
    up_blocks: &[(usize, bool)],
) -> Option<String> {
    let fixed = [
        ("input_blocks_0_0", "conv_in"),
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("out_0", "conv_norm_out"),
        ("out_2", "conv_out"),
    ];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| *from == name) {
        return Some((*to).to_string());
    }
    let (prefix, rest) = if let Some(r) = name.strip_prefix("middle_block_") {
        let (i, rest) = split_index(r)?;
        let block = match i {
            0 => "mid_block_resnets_0",
            1 => "mid_block_attentions_0",
            2 => "mid_block_resnets_1",
            _ => return None,
        };
        (block.to_string(), rest)
    } else if let Some(r) = name.strip_prefix("input_blocks_") {
        let (i, r) = split_index(r)?;
        let (m, rest) = split_index(r)?;
        let entries: Vec<(usize, Option<usize>)> = down_blocks
            .iter()
            .enumerate()
            .flat_map(|(b, &(n, down))| {
                (0..n)
                    .map(move |l| (b, Some(l)))
                    .chain(down.then_some((b, None)))
            })
            .collect();
        let &(b, layer) = entries.get(i.checked_sub(1)?)?;
        match (layer, m) {
            (Some(l), 0) => (format!("down_blocks_{b}_resnets_{l}"), rest),
            (Some(l), 1) => (format!("down_blocks_{b}_attentions_{l}"), rest),
            (None, 0) if rest == "op" => (format!("down_blocks_{b}_downsamplers_0_conv"), ""),
            _ => return None,
        }
    } else if let Some(r) = name.strip_prefix("output_blocks_") {
        let (i, r) = split_index(r)?;
        let (m, rest) = split_index(r)?;
        let entries: Vec<(usize, usize, bool)> = up_blocks
            .iter()
            .enumerate()
            .flat_map(|(b, &(n, attn))| (0..n).map(move |l| (b, l, attn)))
            .collect();
        let &(b, l, attn) = entries.get(i)?;
        match m {
            0 => (format!("up_blocks_{b}_resnets_{l}"), rest),
            1 if attn => (format!("up_blocks_{b}_attentions_{l}"), rest),
            1 | 2 => (format!("up_blocks_{b}_upsamplers_0"), rest),
            _ => return None,
        }
    } else {
        return None;
    };
    let resnet = [
        ("in_layers_0", "norm1"),
        ("in_layers_2", "conv1"),
        ("emb_layers_1", "time_emb_proj"),
        ("out_layers_0", "norm2"),
        ("out_layers_3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ];
    let rest = if prefix.contains("_resnets_") {
        resnet
            .iter()
            .find(|(from, _)| *from == rest)
            .map_or(rest, |(_, to)| to)
    } else {
        rest
    };
    Some(if rest.is_empty() {
        prefix
    } else {
        format!("{prefix}_{rest}")
    })
}

/// `"4_1_rest"` → (4, `"1_rest"`); `"2"` → (2, `""`).
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (digits, rest) = match s.split_once('_') {
        Some((d, r)) => (d, r),
        None => (s, ""),
    };
    Some((digits.parse().ok()?, rest))
}
