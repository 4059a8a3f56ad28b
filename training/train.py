#!/usr/bin/env python3
"""Train the embedded default model: stage `vae` (AutoencoderKL, RGBA 32 px -> 16x8x8 latents; with --config v2
64 px -> 32x8x8), then stage `unet` (UNet2DConditionModel + CLIPTextModel jointly, on cached latents). Resumable.

    python train.py --run runs/default --stage all                  # both stages, default step counts
    python train.py --run runs/v2 --config v2 --stage all           # the 64x64 model (vocabulary v2)
    python train.py --run runs/default --stage all --resume         # continue after a stop / --minutes limit
    python train.py --run runs/default --stage unet --resume --minutes 30 --unet-steps 40000
    python train.py --run runs/v2new --config v2 --stage all --objective v-zsnr   # v-prediction, zero terminal SNR

Everything lives in the run folder: run.json (configs), data/ (procedural dataset cache), tokenizer/,
vae.pt / unet.pt (training state: weights, EMA, optimizer, step), latents.pt, log.jsonl, samples/.
A checkpoint is written every --ckpt-minutes, at the end, at the --minutes limit and on SIGINT/SIGTERM.
The data order, noise and timesteps of step k depend only on (seed, k), so a resumed run continues exactly.
"""
import argparse
import copy
import json
import math
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import clip_bpe  # noqa: E402
import dataset  # noqa: E402
import recipe  # noqa: E402


# ----------------------------------------------------------------------------------------- helpers
class Stopper:
    """Turns SIGINT/SIGTERM into a clean 'checkpoint and exit'."""

    def __init__(self):
        self.stop = False
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, *_):
        if self.stop:
            raise KeyboardInterrupt
        print("\nstop requested: checkpointing ...", flush=True)
        self.stop = True


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step, total, base, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def log(run, rec):
    with open(os.path.join(run, "log.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def step_rng(seed, stage, step):
    return np.random.default_rng([seed, {"vae": 1, "unet": 2}[stage], step])


def step_gen(seed, stage, step):
    return torch.Generator().manual_seed(seed * 1_000_003 + {"vae": 1, "unet": 2}[stage] * 1_000_000_007 + step)


def roll_tiles(x, rng, is_tile, unit=1):
    """Random per-sample circular shift (multiples of `unit` px) of the tiles in a batch [N,C,H,W]."""
    h = x.shape[-1]
    out = x.clone()
    for i in np.nonzero(is_tile)[0]:
        dy, dx = rng.integers(0, h // unit, size=2) * unit
        out[i] = torch.roll(x[i], (int(dy), int(dx)), dims=(-2, -1))
    return out


# ----------------------------------------------------------------------------------------- run setup
def setup_run(a):
    os.makedirs(a.run, exist_ok=True)
    meta_path = os.path.join(a.run, "run.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        have = meta.get("config", "v1")
        if a.config and a.config != have and recipe.CONFIGS.get(a.config) != recipe.CONFIGS.get(have):
            sys.exit(f"{meta_path} was created with --config {have}, not {a.config}: use a new --run")
    else:
        name = a.config or recipe.DEFAULT_CONFIG
        cfg = recipe.CONFIGS[name]
        meta = {"config": name, "vae": dict(cfg["vae"]), "unet": dict(cfg["unet"]), "text_encoder": dict(recipe.TEXT_CONFIG),
                "data": {"n": a.n_train, "seed": a.data_seed, "size": cfg["size"], "vocab": cfg["vocab"]}, "seed": a.seed}
    tok_dir = os.path.join(a.run, "tokenizer")
    if "tokenizer" not in meta or not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        meta["tokenizer"] = clip_bpe.write_tokenizer(tok_dir, vocab=meta["data"].get("vocab", "v1"))
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def load_data(a, meta):
    d = meta["data"]
    ddir = os.path.join(a.run, "data")
    vocab = d.get("vocab", "v1")
    tag = "" if vocab == "v1" else f"_{vocab}"
    npz = os.path.join(ddir, f"train_s{d['seed']}_n{d['n']}_{d['size']}px{tag}.npz")
    if not os.path.exists(npz):
        os.makedirs(ddir, exist_ok=True)
        t = time.time()
        print(f"generating {d['n']} procedural {d['size']}px samples (vocabulary {vocab}, seed {d['seed']}) ...",
              flush=True)
        g = dataset.generate_parallel(d["n"], d["seed"], d["size"], vocab=vocab, workers=a.data_workers)
        ids = np.array(clip_bpe.encode(os.path.join(a.run, "tokenizer", "tokenizer.json"), g["captions"]), np.int32)
        np.savez(npz + ".tmp.npz", images=g["images"], labels=g["labels"], is_tile=g["is_tile"], ids=ids)
        os.replace(npz + ".tmp.npz", npz)
        with open(os.path.join(ddir, "captions.json"), "w", encoding="utf-8") as f:
            json.dump(g["captions"], f)
        print(f"  done in {time.time() - t:.0f} s -> {npz}", flush=True)
    z = np.load(npz)
    return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------- stage: vae
def train_vae(a, meta, data, stopper):
    dev = torch.device(a.device)
    ckpt = os.path.join(a.run, "vae.pt")
    vae = recipe.build_vae(meta["vae"]).to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    step = 0
    if os.path.exists(ckpt):
        if not a.resume:
            sys.exit(f"{ckpt} exists: pass --resume to continue it (or use a new --run)")
        st = torch.load(ckpt, map_location=dev, weights_only=False)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        if st.get("done") and step >= a.vae_steps:
            print(f"vae: already done ({step} steps, scaling_factor {meta['vae']['scaling_factor']})")
            return
    print(f"vae: {recipe.n_params(vae) / 1e6:.3f} M params, step {step} -> {a.vae_steps}, batch {a.vae_batch}", flush=True)
    tiles = np.nonzero(data["is_tile"])[0]
    n = len(data["images"])

    def save(done=False):
        atomic_save({"step": step, "model": vae.state_dict(), "opt": opt.state_dict(), "done": done}, ckpt)

    t_ckpt, t_start, t_log, acc = time.time(), time.time(), time.time(), []
    c_log = time.process_time()
    vae.train()
    while step < a.vae_steps:
        rng = step_rng(a.seed, "vae", step)
        g = step_gen(a.seed, "vae", step)
        circ = a.circular_frac > 0 and rng.random() < a.circular_frac
        idx = rng.choice(tiles, a.vae_batch) if circ else rng.integers(0, n, a.vae_batch)
        x = recipe.to_tensor(data["images"][idx])
        x = roll_tiles(x, rng, data["is_tile"][idx])
        if rng.random() < 0.5:
            x = x.flip(-1)
        x = x.to(dev)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, a.vae_steps, a.vae_lr, a.vae_warmup)
        if circ:
            mean, std = recipe.encode_wrapped(vae, x)
            recipe.set_circular(vae.decoder, True)
        else:
            d = vae.encode(x).latent_dist
            mean, std = d.mean, d.std
        z = mean + std * torch.randn(mean.shape, generator=g).to(dev)
        rec = vae.decode(z).sample
        recipe.set_circular(vae.decoder, False)
        l1 = (rec - x).abs().mean()
        l2 = (rec - x).pow(2).mean()
        kl = 0.5 * (mean.pow(2) + std.pow(2) - 1 - 2 * torch.log(std)).sum(dim=(1, 2, 3)).mean()
        # Edge term: L1 between the images' neighbour differences, so 1-px lines (mortar, outlines, veins) are
        # kept instead of averaged away by the L1/MSE terms (pixel art is mostly edges).
        edge = sum((torch.diff(rec, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (-1, -2))
        loss = l1 + l2 + a.vae_edge * edge + a.vae_kl * kl / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        acc.append((l1.item(), l2.item(), kl.item()))
        if step % a.log_every == 0 or step == a.vae_steps:
            dt = (time.time() - t_log) / len(acc)
            ct = (time.process_time() - c_log) / len(acc)
            m = np.mean(acc, axis=0)
            print(f"vae {step}/{a.vae_steps} l1 {m[0]:.4f} mse {m[1]:.4f} kl {m[2]:.1f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} {dt:.3f} s/step ({ct:.3f} cpu-s) "
                  f"eta {dt * (a.vae_steps - step) / 60:.1f} min", flush=True)
            log(a.run, {"stage": "vae", "step": step, "l1": m[0], "mse": m[1], "kl": m[2], "s_per_step": dt,
                        "cpu_s_per_step": ct})
            t_log, acc, c_log = time.time(), [], time.process_time()
        out_of_time = a.minutes and time.time() - t_start > a.minutes * 60
        if stopper.stop or out_of_time or time.time() - t_ckpt > a.ckpt_minutes * 60:
            save()
            t_ckpt = time.time()
            if stopper.stop or out_of_time:
                print(f"vae: checkpoint at step {step}; continue with --resume")
                return "stopped"
    # Done: measure the latent scale (1 / std of scaled-free latents) and record it in the config.
    vae.eval()
    with torch.no_grad():
        idx = np.random.default_rng(a.seed).choice(n, min(n, 1024), replace=False)
        zs = []
        for i in range(0, len(idx), 256):
            x = recipe.to_tensor(data["images"][idx[i:i + 256]]).to(dev)
            zs.append(vae.encode(x).latent_dist.sample().cpu())
        sf = float(1.0 / torch.cat(zs).std())
    meta["vae"]["scaling_factor"] = round(sf, 5)
    with open(os.path.join(a.run, "run.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    save(done=True)
    stale = os.path.join(a.run, "latents.pt")
    if os.path.exists(stale):  # encoded with an older VAE
        os.remove(stale)
        print("vae: removed the stale latents.pt (the unet stage re-encodes)")
    print(f"vae: done, scaling_factor {meta['vae']['scaling_factor']}", flush=True)


def vae_preview(a, meta, data, path, k=16):
    """Originals (top) and reconstructions (bottom) of k training images."""
    from PIL import Image

    vae = recipe.build_vae(meta["vae"])
    vae.load_state_dict(torch.load(os.path.join(a.run, "vae.pt"), map_location="cpu", weights_only=False)["model"])
    vae.eval()
    x = recipe.to_tensor(data["images"][:k])
    with torch.no_grad():
        rec = recipe.to_u8(vae.decode(vae.encode(x).latent_dist.mean).sample)
    save_grid(np.concatenate([data["images"][:k], rec]), path, cols=k)


def save_grid(imgs, path, cols=8, scale=2):
    from PIL import Image

    n, s = len(imgs), imgs.shape[1]
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGBA", (cols * s * scale, rows * s * scale), (255, 0, 255, 255))
    for k in range(n):
        im = Image.fromarray(imgs[k], "RGBA").resize((s * scale, s * scale), Image.NEAREST)
        bg = Image.new("RGBA", im.size, (255, 0, 255, 255) if (k // cols + k) % 2 else (40, 160, 40, 255))
        sheet.paste(Image.alpha_composite(bg, im), ((k % cols) * s * scale, (k // cols) * s * scale))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sheet.save(path)


# ----------------------------------------------------------------------------------------- stage: unet
def latent_cache(a, meta, data, dev):
    path = os.path.join(a.run, "latents.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    st = torch.load(os.path.join(a.run, "vae.pt"), map_location=dev, weights_only=False)
    if not st.get("done"):
        sys.exit("the vae stage has not finished: run --stage vae first")
    vae = recipe.build_vae(meta["vae"]).to(dev)
    vae.load_state_dict(st["model"])
    vae.eval()
    n = len(data["images"])
    means, stds = [], []
    t = time.time()
    print(f"encoding {n} images to latents (tiles wrap-padded, so their latents are periodic) ...", flush=True)
    with torch.no_grad():
        for i in range(0, n, 256):
            x = recipe.to_tensor(data["images"][i:i + 256]).to(dev)
            tile = torch.from_numpy(data["is_tile"][i:i + 256]).to(dev)
            d = vae.encode(x).latent_dist
            m, s = d.mean, d.std
            if tile.any():
                mw, sw = recipe.encode_wrapped(vae, x[tile])
                m[tile], s[tile] = mw, sw
            means.append(m.cpu())
            stds.append(s.cpu())
    cache = {"mean": torch.cat(means), "std": torch.cat(stds)}
    atomic_save(cache, path)
    print(f"  done in {time.time() - t:.0f} s", flush=True)
    return cache


def set_objective(a, meta, step):
    """The run's unet objective: run.json's, else --objective (default epsilon), recorded in run.json. An epsilon run
    may switch to v-zsnr once (recorded with the step it switched at); any other change is refused."""
    recorded = meta.get("objective")
    have = recorded or {"name": "epsilon", "from_step": 0}  # runs made before --objective existed: epsilon
    want = a.objective
    if recorded is not None and step < have.get("from_step", 0):
        if step:
            sys.exit(f"the unet checkpoint (step {step}) predates run.json's switch to {have['name']} at step "
                     f"{have['from_step']}: use a new --run")
        # The UNet restarts from step 0 in this folder: the objective applies from the start.
        recorded = None
        have = {"name": want or have["name"], "from_step": 0}
        meta["objective"] = have
    elif recorded is None and (not want or want == "epsilon" or step == 0):
        meta["objective"] = {"name": want or "epsilon", "from_step": 0}
    elif want and want != have["name"]:
        if have["name"] == "epsilon" and want == "v-zsnr":
            meta["objective"] = {"name": want, "from_step": step, "previous": have["name"]}
        else:
            sys.exit(f"run.json has objective {have['name']} (since step {have.get('from_step', 0)}); "
                     f"--objective {want} cannot replace it")
    if meta.get("objective") != recorded:
        with open(os.path.join(a.run, "run.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        print(f"unet: objective {meta['objective']['name']} from step {meta['objective']['from_step']}", flush=True)
    return meta["objective"]["name"]


def ema_update(ema, model, decay):
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


def train_unet(a, meta, data, stopper):
    from diffusers import DDPMScheduler

    dev = torch.device(a.device)
    lat = latent_cache(a, meta, data, dev)
    sf = meta["vae"]["scaling_factor"]
    ckpt = os.path.join(a.run, "unet.pt")
    unet = recipe.build_unet(meta["unet"]).to(dev)
    te = recipe.build_text_encoder(meta["text_encoder"], meta["tokenizer"]).to(dev)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=a.unet_lr, weight_decay=0.01)
    step = 0
    if os.path.exists(ckpt):
        if not a.resume:
            sys.exit(f"{ckpt} exists: pass --resume to continue it (or use a new --run)")
        st = torch.load(ckpt, map_location=dev, weights_only=False)
        unet.load_state_dict(st["unet"])
        te.load_state_dict(st["text_encoder"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
    ema_unet, ema_te = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    for p in list(ema_unet.parameters()) + list(ema_te.parameters()):
        p.requires_grad_(False)
    if step:
        ema_unet.load_state_dict(st["ema_unet"])
        ema_te.load_state_dict(st["ema_text_encoder"])
        del st
    if step >= a.unet_steps:
        print(f"unet: already at step {step} >= {a.unet_steps}")
        return
    print(f"unet: {recipe.n_params(unet) / 1e6:.3f} M params + text encoder {recipe.n_params(te) / 1e6:.3f} M, "
          f"step {step} -> {a.unet_steps}, batch {a.unet_batch}", flush=True)
    obj = set_objective(a, meta, step)
    sched = DDPMScheduler(**recipe.train_scheduler(meta))
    acp = sched.alphas_cumprod.to(dev)
    v_pred = recipe.OBJECTIVES[obj]["prediction_type"] == "v_prediction"
    since = meta.get("objective", {}).get("from_step", 0)
    ids_all = torch.from_numpy(data["ids"].astype(np.int64))
    empty = torch.tensor(clip_bpe.encode(os.path.join(a.run, "tokenizer", "tokenizer.json"), [""]), dtype=torch.long)
    tiles = np.nonzero(data["is_tile"])[0]
    n = len(ids_all)

    def save():
        atomic_save({"step": step, "unet": unet.state_dict(), "text_encoder": te.state_dict(),
                     "ema_unet": ema_unet.state_dict(), "ema_text_encoder": ema_te.state_dict(),
                     "opt": opt.state_dict()}, ckpt)

    t_ckpt = t_start = t_log = t_sample = time.time()
    c_log = time.process_time()
    acc = []
    unet.train()
    te.train()
    while step < a.unet_steps:
        rng = step_rng(a.seed, "unet", step)
        g = step_gen(a.seed, "unet", step)
        circ = a.circular_frac > 0 and rng.random() < a.circular_frac
        idx = rng.choice(tiles, a.unet_batch) if circ else rng.integers(0, n, a.unet_batch)
        m, s = lat["mean"][idx], lat["std"][idx]
        z = (m + s * torch.randn(m.shape, generator=g)) * sf
        z = roll_tiles(z, rng, data["is_tile"][idx])
        ids = ids_all[idx].clone()
        drop = torch.from_numpy(rng.random(a.unet_batch) < a.cfg_drop)
        ids[drop] = empty
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (a.unet_batch,), generator=g)
        z, noise, t, ids = z.to(dev), noise.to(dev), t.to(dev), ids.to(dev)
        noisy = sched.add_noise(z, noise, t)
        rewarm = 1.0
        if since and step >= since and a.objective_warmup > 0:
            rewarm = min(1.0, (step - since + 1) / a.objective_warmup)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, a.unet_steps, a.unet_lr, a.unet_warmup) * rewarm
        recipe.set_circular(unet, circ)
        pred = unet(noisy, t, encoder_hidden_states=te(ids)[0]).sample
        recipe.set_circular(unet, False)
        target = sched.get_velocity(z, noise, t) if v_pred else noise
        per = (pred - target).pow(2).mean(dim=(1, 2, 3))
        if a.snr_gamma > 0:
            snr = acp[t] / (1 - acp[t])
            if v_pred:
                # v-loss = (1 + snr) x the x0-loss. Min-SNR-gamma on (1 + snr): weight 1 (the plain v-loss) while
                # 1 + snr <= gamma, so the pure-noise end (snr = 0, where the prompt alone sets the colour) keeps
                # its full weight, and the x0 weight is capped at gamma at low noise.
                per = per * torch.clamp(snr + 1, max=a.snr_gamma) / (snr + 1)
            else:
                per = per * torch.clamp(snr, max=a.snr_gamma) / snr
        loss = per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        # The EMA warms up again after an objective switch, so it stops averaging the old objective's weights soon.
        decay = min(a.ema_decay, (1 + step - since) / (10 + step - since))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_te, te, decay)
        acc.append(loss.item())
        if step % a.log_every == 0 or step == a.unet_steps:
            dt = (time.time() - t_log) / len(acc)
            ct = (time.process_time() - c_log) / len(acc)
            print(f"unet {step}/{a.unet_steps} loss {np.mean(acc):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{dt:.3f} s/step ({ct:.3f} cpu-s) eta {dt * (a.unet_steps - step) / 60:.1f} min", flush=True)
            log(a.run, {"stage": "unet", "step": step, "objective": obj, "loss": float(np.mean(acc)), "s_per_step": dt,
                        "cpu_s_per_step": ct})
            t_log, acc, c_log = time.time(), [], time.process_time()
        if a.sample_minutes and time.time() - t_sample > a.sample_minutes * 60:
            preview_samples(a, meta, ema_unet, ema_te, step, dev)
            t_sample = time.time()
            t_log, c_log = time.time(), time.process_time()
        out_of_time = a.minutes and time.time() - t_start > a.minutes * 60
        if stopper.stop or out_of_time or time.time() - t_ckpt > a.ckpt_minutes * 60:
            save()
            t_ckpt = time.time()
            if stopper.stop or out_of_time:
                print(f"unet: checkpoint at step {step}; continue with --resume")
                return "stopped"
    save()
    if a.sample_minutes:  # 0 = no previews at all
        preview_samples(a, meta, ema_unet, ema_te, step, dev)
    print(f"unet: done at step {step}", flush=True)


PREVIEW_PROMPTS = ["red bricks", "mossy grey cobblestone", "wooden planks", "green grass", "blue water", "orange lava",
                   "white marble", "yellow sand", "a red potion", "a silver sword", "a blue shield", "a green gem",
                   "a gold coin", "a gold key", "a red mushroom", "a red heart"]


PREVIEW_PROMPTS_V2 = ["old red brick wall", "mossy grey cobblestone", "hexagon tiles", "blue sci-fi panels",
                      "red carpet", "green leaves", "pixel art grey rock", "white snow", "brown mud", "tree bark",
                      "dark wooden floor", "hand painted gravel", "a glowing blue crystal", "a silver helmet",
                      "a silver axe", "a brown staff", "a black bomb", "a red apple", "a pixel art brown book",
                      "a silver armor", "a golden crown", "a hand painted silver hammer", "a red potion",
                      "a gold coin"]


def preview_samples(a, meta, unet, te, step, dev):
    vae = recipe.build_vae(meta["vae"]).to(dev)
    vae.load_state_dict(torch.load(os.path.join(a.run, "vae.pt"), map_location=dev, weights_only=False)["model"])
    vae.eval()
    tok = os.path.join(a.run, "tokenizer", "tokenizer.json")
    prompts = PREVIEW_PROMPTS if meta["data"].get("vocab", "v1") == "v1" else PREVIEW_PROMPTS_V2
    ids = torch.tensor(clip_bpe.encode(tok, prompts), dtype=torch.long)
    empty = torch.tensor(clip_bpe.encode(tok, [""]), dtype=torch.long)
    circ = torch.tensor([not p.startswith("a ") for p in prompts])
    was = unet.training, te.training
    unet.eval()
    te.eval()
    imgs = recipe.sample(unet, te, vae, ids, empty, circular=circ, generator=torch.Generator().manual_seed(0), device=dev,
                         scheduler=recipe.shipped_scheduler(meta))
    unet.train(was[0])
    te.train(was[1])
    path = os.path.join(a.run, "samples", f"unet_{step:06d}.png")
    save_grid(imgs, path, cols=8, scale=3)
    print(f"  samples -> {path}", flush=True)


# ----------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=os.path.join(HERE, "runs", "default"))
    ap.add_argument("--stage", choices=["vae", "unet", "all"], default="all")
    ap.add_argument("--config", choices=sorted(recipe.CONFIGS),
                    help="model + data config, fixed in run.json when the run is created (default v1: the 32x32 model "
                         "shipped until session 14; v2: the 64x64 model of issue 12, shipped since)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for the unet stage (1 is robust on a shared machine; 2 if it is idle)")
    ap.add_argument("--vae-threads", type=int, default=1,
                    help="threads for the vae stage (its 32x32 convs ran slower with 2 threads than with 1 here)")
    ap.add_argument("--minutes", type=float, default=0, help="stop (with a checkpoint) after this long; 0 = no limit")
    ap.add_argument("--ckpt-minutes", type=float, default=10)
    ap.add_argument("--sample-minutes", type=float, default=15, help="EMA preview grid every N minutes; 0 = off")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=30000, help="procedural samples (fixed when the run is created)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--data-workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes that generate the procedural dataset when a run is created (same data for any N)")
    ap.add_argument("--circular-frac", type=float, default=0.4,
                    help="fraction of steps that train on tiles only with circular padding (seamless mode)")
    ap.add_argument("--vae-steps", type=int, default=4000)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-warmup", type=int, default=100)
    ap.add_argument("--vae-edge", type=float, default=0.5, help="weight of the L1 loss on neighbour differences")
    ap.add_argument("--vae-kl", type=float, default=1e-5, help="KL weight relative to the per-element L1+MSE")
    ap.add_argument("--unet-steps", type=int, default=15500)
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--unet-lr", type=float, default=5e-4)
    ap.add_argument("--unet-warmup", type=int, default=500)
    ap.add_argument("--objective", choices=sorted(recipe.OBJECTIVES),
                    help="unet stage: epsilon (default, SD 1.x) or v-zsnr (v-prediction on the zero-terminal-SNR "
                         "schedule). Recorded in run.json the first time; switching an epsilon run to v-zsnr is "
                         "allowed once (it records the step and warms the learning rate up again over "
                         "--objective-warmup steps), any other change is refused")
    ap.add_argument("--objective-warmup", type=int, default=200)
    ap.add_argument("--cfg-drop", type=float, default=0.1, help="fraction of empty captions (classifier-free guidance)")
    ap.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR loss weighting; 0 = plain MSE")
    ap.add_argument("--ema-decay", type=float, default=0.999)
    a = ap.parse_args()
    if a.objective and a.stage == "vae":
        ap.error("--objective is a unet-stage option (it is recorded when the unet stage starts): "
                 "pass it with --stage unet or all")
    if a.objective_warmup < 0:
        ap.error(f"--objective-warmup {a.objective_warmup}: must be >= 0")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    meta = setup_run(a)
    data = load_data(a, meta)
    stopper = Stopper()
    t0 = time.time()
    if a.stage in ("vae", "all"):
        torch.set_num_threads(a.vae_threads)
        if train_vae(a, meta, data, stopper) == "stopped":
            return
        vae_preview(a, meta, data, os.path.join(a.run, "samples", "vae_reconstruction.png"))
        a.minutes = max(0.01, a.minutes - (time.time() - t0) / 60) if a.minutes else 0
    if a.stage in ("unet", "all"):
        torch.set_num_threads(a.threads)
        train_unet(a, meta, data, stopper)


if __name__ == "__main__":
    main()
