"""Shared pieces of the recipe: model configs, builders, seamless (circular) padding, a small DDIM sampler."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

IMAGE_SIZE = 32

# v1's base configs below (v2 overrides them in CONFIGS: 64 px, an 8x VAE with 32 latent channels).
# AutoencoderKL: RGBA in/out, 3 blocks -> 4x down (32 px -> 8x8 latents). scaling_factor is measured after the
# VAE stage (1 / std of the latents) and written into the config then. norm_num_groups 4 (8-16 channels per
# group, like tests/fixtures/tiny-sd's VAE): with 32 groups the 32-channel conv_norm_out before the decoder's
# conv_out is a per-channel instance norm, which erases the mean colour of flat regions (measured: after 600
# steps every tile decoded grey-brown; L1 0.166).
LATENT_CHANNELS = 16
VAE_CONFIG = {
    "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64], "layers_per_block": 1, "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 4, "sample_size": IMAGE_SIZE, "scaling_factor": 1.0, "act_fn": "silu",
}

# UNet2DConditionModel on 8x8 latents: cross-attention at 8x8 and 4x4 (and the 2x2 mid block).
# norm_num_groups 32 (every channel count is a multiple of 32). attention_head_dim is diffusers' SD1.x naming
# quirk: it is the number of heads (4), head size = channels / 4.
UNET_CONFIG = {
    "sample_size": IMAGE_SIZE // 4, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [64, 96, 96], "layers_per_block": 1,
    "cross_attention_dim": 128, "attention_head_dim": 4, "norm_num_groups": 32, "norm_eps": 1e-5,
    "use_linear_projection": False, "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
    "mid_block_scale_factor": 1.0, "act_fn": "silu", "center_input_sample": False,
    "transformer_layers_per_block": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "upcast_attention": False,
}

# CLIPTextModel (SD 1.x style: quick_gelu, last_hidden_state after final_layer_norm, causal mask only).
TEXT_CONFIG = {
    "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 128, "layer_norm_eps": 1e-5,
}

# ----------------------------------------------------------------------------------------- named configs
# `train.py --config NAME` fixes these in run.json when a run is created. "v1" reproduces v1, the 32x32 model shipped until session 14.
# The v2 candidates (issue 12: 64x64 RGBA at <= 0.3 s per image on one thread) were exported untrained and
# timed with the Rust pipeline (training/README.md, "v2"); "v2" names the chosen one.
def _vae(blocks, latent, size):
    cfg = dict(VAE_CONFIG, block_out_channels=list(blocks), latent_channels=latent, sample_size=size)
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(blocks)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(blocks)
    return cfg


def _unet(latent, sample):
    return dict(UNET_CONFIG, in_channels=latent, out_channels=latent, sample_size=sample)


CONFIGS = {
    "v1": {"size": 32, "vocab": "v1", "vae": VAE_CONFIG, "unet": UNET_CONFIG},
    # 8x VAE (4 blocks), 16 latent channels: the v1 UNet on 8x8 latents; 16x compression of the RGBA pixels
    "v2-f8c16": {"size": 64, "vocab": "v2", "vae": _vae([32, 64, 64, 64], 16, 64), "unet": _unet(16, 8)},
    # the same 8x VAE with 32 latent channels (8x compression); UNet on 8x8 latents (only conv_in/out grow).
    # (A VAE widened to [32, 64, 128, 128] was 34 MB of f32 in all, over export.py's 25 MB limit.)
    "v2-f8c32": {"size": 64, "vocab": "v2", "vae": _vae([32, 64, 64, 64], 32, 64), "unet": _unet(32, 8)},
    # v1's 4x VAE, the v1 UNet on 16x16 latents (4x compression, as v1)
    "v2-f4": {"size": 64, "vocab": "v2", "vae": _vae([32, 64, 64], 16, 64), "unet": _unet(16, 16)},
}
CONFIGS["v2"] = CONFIGS["v2-f8c32"]
DEFAULT_CONFIG = "v1"


def vae_factor(vae_cfg):
    return 2 ** (len(vae_cfg["block_out_channels"]) - 1)


# Training noise schedule (DDPM, epsilon; v2 trains with --objective v-zsnr) and the sampler shipped with v1
# (DDIM, see README for why; v2's export adds v-prediction and the zero-terminal-SNR rescale).
TRAIN_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False}
SHIPPED_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                     "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
                     "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "trailing"}
DEFAULT_STEPS, DEFAULT_GUIDANCE = 12, 4.0

# Training objectives (run.json "objective", train.py --objective). `epsilon`: SD 1.x's noise prediction on the
# scaled_linear schedule above, whose last timestep keeps sqrt(alphas_cumprod[999]) = 0.068 of the latents.
# `v-zsnr`: v-prediction on the same betas rescaled to zero terminal SNR (Lin et al. 2023, "Common Diffusion
# Noise Schedules and Sample Steps are Flawed"; diffusers' rescale_betas_zero_snr), so that at t = 999, where
# sampling starts, the model sees pure noise in training too and must take the image's colour from the prompt.
OBJECTIVES = {
    "epsilon": {"prediction_type": "epsilon", "rescale_betas_zero_snr": False},
    "v-zsnr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
}


def objective(meta):
    """The run's objective name (run.json "objective" -> "name"; runs made before it existed: epsilon)."""
    return meta.get("objective", {}).get("name", "epsilon")


def train_scheduler(meta):
    """DDPMScheduler kwargs of the run's objective."""
    return {**TRAIN_SCHEDULER, **OBJECTIVES[objective(meta)]}


def shipped_scheduler(meta):
    """DDIMScheduler kwargs that the exported model_index's scheduler gets (and previews sample with)."""
    return {**SHIPPED_SCHEDULER, **OBJECTIVES[objective(meta)]}


def build_vae(cfg):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg)


def build_unet(cfg):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg)


def build_text_encoder(cfg, tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=tok["vocab_size"], bos_token_id=tok["bos_id"],
                                        eos_token_id=tok["eos_id"], pad_token_id=tok["pad_id"], **cfg))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------------- seamless padding
def set_circular(module, on):
    """Switch every padded Conv2d of `module` between zero and circular padding (the runtime's seamless
    tiling does the same). diffusers' VAE encoder Downsample2D pads (0,1,0,1) by hand and is not affected;
    use `encode_wrapped` for periodic inputs."""
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d) and any(p > 0 for p in m.padding if isinstance(p, int)):
            m.padding_mode = "circular" if on else "zeros"


def encode_wrapped(vae, x, pad=None):
    """Latent distribution of periodic images: wrap-pad by `pad` px (default 2 latent cells: 8 px for v1's 4x
    VAE, 16 px for an 8x VAE), encode, crop the centre latents. Returns (mean, std) of the posterior."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    pad = 2 * f if pad is None else pad
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="circular")
    d = vae.encode(xp).latent_dist
    c = pad // f
    return d.mean[..., c:-c, c:-c], d.std[..., c:-c, c:-c]


def to_tensor(u8):
    """uint8 [N,H,W,4] -> float [N,4,H,W] in [-1, 1]."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_u8(x):
    """[N,C,H,W] in ~[-1,1] -> uint8 [N,H,W,C] exactly like diffusers' postprocess (round(clamp(x/2+.5)*255))."""
    import numpy as np

    y = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().float().numpy()
    return (y * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(unet, text_encoder, vae, ids, uncond_ids, *, steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE,
           circular=None, generator=None, device="cpu", scheduler=None):
    """DDIM (the shipped scheduler config, or `scheduler`: DDIMScheduler kwargs, e.g. shipped_scheduler(meta))
    with classifier-free guidance; ids [N,77]. circular: bool per row (seamless tiles) or None. Returns uint8 RGBA
    [N,H,W,4]."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**(scheduler or SHIPPED_SCHEDULER))
    sched.set_timesteps(steps)
    n = ids.shape[0]
    cond = text_encoder(ids.to(device))[0]
    unc = text_encoder(uncond_ids.to(device).expand(n, -1))[0]
    sz = unet.config.sample_size
    lat = torch.randn((n, unet.config.in_channels, sz, sz), generator=generator).to(device) * sched.init_noise_sigma
    groups = [torch.ones(n, dtype=torch.bool)] if circular is None else [circular, ~circular]
    out = torch.zeros_like(lat)
    sf = vae.config.scaling_factor
    for gi, sel in enumerate(groups):
        if not sel.any():
            continue
        circ = circular is not None and gi == 0
        set_circular(unet, circ)
        set_circular(vae.decoder, circ)
        x = lat[sel.to(lat.device)]
        c, u = cond[sel.to(cond.device)], unc[sel.to(unc.device)]
        for t in sched.timesteps:
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([u, c])).sample
            eu, ec = e.chunk(2)
            x = sched.step(eu + guidance * (ec - eu), t, x).prev_sample
        out[sel.to(out.device)] = x
    img = vae.decode(out / sf).sample
    set_circular(unet, False)
    set_circular(vae.decoder, False)
    return to_u8(img)
