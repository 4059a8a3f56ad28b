//! [`UNet2DConditionModel`]'s forward pass (diffusers' `UNet2DConditionModel.forward`): time
//! (+ class / `text_time` addition) embedding, `conv_in`, down blocks pushing skip connections,
//! mid block, up blocks consuming them, `conv_norm_out -> SiLU -> conv_out`; each public entry
//! point with or without the named [`Intermediates`].

use super::*;

impl UNet2DConditionModel {
    /// One denoising prediction (diffusers' `UNet2DConditionModel.forward(...).sample`).
    ///
    /// `sample` `[batch, in_channels, h, w]` (noisy latents, already scaled by the scheduler's
    /// `scale_model_input`), `timestep` in `[0, num_train_timesteps)` shared by the whole batch
    /// (fractional values are kept; cast to f32 like diffusers), `encoder_hidden_states`
    /// `[batch, seq, cross_attention_dim]` (CLIP `last_hidden_state`). Returns
    /// `[batch, out_channels, h, w]`: epsilon or v, per the scheduler's `prediction_type`.
    /// `h` and `w` need not be multiples of `2^num_downsamplers` (upsampling then follows the
    /// skip connections' sizes, as diffusers' `upsample_size`). `tiling` makes every 3x3
    /// convolution circular on the chosen axes (seamless textures).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        tiling: Tiling,
    ) -> Result<Tensor> {
        self.run(
            sample,
            timestep,
            encoder_hidden_states,
            None,
            None,
            tiling,
            None,
        )
    }

    /// [`Self::forward`] with diffusers' `class_labels` (`[batch]` integer ids, u32/i64), for
    /// UNets with `num_class_embeds` (the x4 upscaler passes its noise level): `emb =
    /// time_embedding(time_proj(t)) + class_embedding.weight[class_labels]`.
    ///
    /// Errors (candle's): labels given to a UNet without a class embedding, or missing for one
    /// with it.
    pub fn forward_with_class_labels(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        class_labels: Option<&Tensor>,
        tiling: Tiling,
    ) -> Result<Tensor> {
        let (hs, labels) = (encoder_hidden_states, class_labels);
        self.run(sample, timestep, hs, None, labels, tiling, None)
    }

    /// [`Self::forward_with_class_labels`] that also returns the named [`Intermediates`]
    /// (`class_embedding` `[batch, time_embed_dim]` follows `time_embedding` when labels are
    /// given).
    pub fn forward_with_class_labels_traced(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        class_labels: Option<&Tensor>,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut rec = Vec::new();
        let (hs, labels) = (encoder_hidden_states, class_labels);
        let out = self.run(sample, timestep, hs, None, labels, tiling, Some(&mut rec))?;
        Ok((out, rec))
    }

    /// [`Self::forward`] with diffusers' `added_cond_kwargs`, which a `text_time` UNet (SDXL)
    /// needs (`text_embeds` `[batch, projection_dim]`, `time_ids` `[batch, 6]`) and other UNets
    /// ignore. Errors (candle's) when a `text_time` UNet gets `None`, as diffusers raises.
    pub fn forward_added(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCondKwargs>,
        tiling: Tiling,
    ) -> Result<Tensor> {
        self.run(
            sample,
            timestep,
            encoder_hidden_states,
            added,
            None,
            tiling,
            None,
        )
    }

    /// [`Self::forward_added`] that also returns the named [`Intermediates`] (`add_time_proj`
    /// `[batch * 6, addition_time_embed_dim]` and `add_embedding` `[batch, time_embed_dim]`
    /// follow `time_embedding` for a `text_time` UNet).
    pub fn forward_added_with_intermediates(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCondKwargs>,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut rec = Vec::new();
        let out = self.run(
            sample,
            timestep,
            encoder_hidden_states,
            added,
            None,
            tiling,
            Some(&mut rec),
        )?;
        Ok((out, rec))
    }

    /// [`Self::forward`] that also returns the named [`Intermediates`] (for parity debugging).
    pub fn forward_with_intermediates(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut rec = Vec::new();
        let out = self.run(
            sample,
            timestep,
            encoder_hidden_states,
            None,
            None,
            tiling,
            Some(&mut rec),
        )?;
        Ok((out, rec))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCondKwargs>,
        class_labels: Option<&Tensor>,
        tiling: Tiling,
        mut rec: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let mut record = |name: String, t: &Tensor| {
            if let Some(rec) = rec.as_deref_mut() {
                rec.push((name, t.clone()));
            }
        };
        let (batch, _, _, _) = sample.dims4()?;
        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };

        // 1. time
        let t_emb = self
            .time_proj
            .forward(timestep, batch, sample.device())?
            .to_dtype(sample.dtype())?;
        record("time_proj".into(), &t_emb);
        let mut emb = self.time_embedding.forward(&t_emb)?;
        record("time_embedding".into(), &emb);
        match (&self.class_embedding, class_labels) {
            (Some(table), Some(labels)) => {
                let class_emb = table.forward(labels)?.to_dtype(emb.dtype())?;
                record("class_embedding".into(), &class_emb);
                emb = (emb + class_emb)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!(
                "class_labels should be provided when num_class_embeds > 0 (this UNet embeds a \
                 class label, e.g. the upscaler's noise level)"
            ),
            (None, Some(_)) => {
                candle_core::bail!("class_labels given to a UNet without num_class_embeds")
            }
        }
        if let Some(add) = &self.add_embedding {
            let Some(added) = added else {
                candle_core::bail!(
                    "this UNet has addition_embed_type \"text_time\" and needs added_cond_kwargs \
                     (text_embeds and time_ids)"
                );
            };
            let (proj, aug) = add.forward(&added.text_embeds, &added.time_ids)?;
            record("add_time_proj".into(), &proj);
            record("add_embedding".into(), &aug);
            emb = (emb + aug)?;
        }

        // 2. pre-process
        let mut h = self.conv_in.forward(&sample, tiling)?;
        record("conv_in".into(), &h);

        // 3. down
        let mut skips = vec![h.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            crate::cancel::checkpoint()?;
            let (out, res) = block.forward(&h, &emb, context, tiling)?;
            for (j, r) in res.iter().enumerate() {
                record(format!("down_blocks.{i}/res{j}"), r);
            }
            record(format!("down_blocks.{i}/hidden"), &out);
            skips.extend(res);
            h = out;
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            crate::cancel::checkpoint()?;
            h = mid.forward(&h, &emb, context, tiling)?;
            record("mid_block".into(), &h);
        }

        // 5. up
        for (i, block) in self.up_blocks.iter().enumerate() {
            crate::cancel::checkpoint()?;
            let k = block.num_skips();
            if skips.len() < k {
                candle_core::bail!(
                    "up_blocks.{i} needs {k} skip connections, {} left",
                    skips.len()
                );
            }
            let res = skips.split_off(skips.len() - k);
            let upsample_size = match skips.last() {
                Some(next) => {
                    let (_, _, sh, sw) = next.dims4()?;
                    Some((sh, sw))
                }
                None => None,
            };
            h = block.forward(&h, &res, &emb, context, upsample_size, tiling)?;
            record(format!("up_blocks.{i}"), &h);
        }

        // 6. post-process
        let h = self.conv_norm_out.forward(&h)?;
        record("conv_norm_out".into(), &h);
        let out = self.conv_out.forward(&elementwise::silu(&h)?, tiling)?;
        record("conv_out".into(), &out);
        Ok(out)
    }
}
