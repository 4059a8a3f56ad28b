#!/usr/bin/env python3
"""A small CNN that recognises the material (tile classes) or object (sprite classes) of an RGBA image.
Trained on the procedural data (all colours, held-out combinations included: it judges shape, not colour) with
blur/noise augmentation so that soft generated images are judged fairly. Used by evaluate.py.

    python classifier.py --out runs/classifier64                          # v2: 46 classes at 64 px (default)
    python classifier.py --out runs/classifier --vocab v1 --size 32        # v1: 26 classes at 32 px (v1, shipped until session 14)
        [--n 16000] [--epochs 8] [--threads 1] [--resume] [--data-workers 2]

Writes classifier.safetensors (+ classifier.json: classes, input size, vocabulary, accuracy on a fresh
validation set). Images of any size are resized (area) to the classifier's size. A checkpoint (classifier.pt: weights,
optimizer, schedule, generator, epoch) is written after every epoch; a run stopped in any way continues from its last
finished epoch with --resume (the data is regenerated from the same seeds), ending with the same weights when the
device and --threads are the same. A finished --out keeps its classifier.pt, so running into it again needs --resume
(which only rewrites the outputs) or a new --out.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import dataset  # noqa: E402


class Net(nn.Module):
    def __init__(self, n_classes, w=24):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())

        self.f = nn.Sequential(block(4, w), nn.AvgPool2d(2), block(w, 2 * w), nn.AvgPool2d(2), block(2 * w, 4 * w),
                               nn.AvgPool2d(2), block(4 * w, 4 * w))
        self.head = nn.Linear(8 * w, n_classes)

    def forward(self, x):
        h = self.f(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], 1))


def to_input(u8, size=32):
    """uint8 [N,H,W,4] (any H=W, resized to size) -> float [N,4,size,size]; RGB premultiplied by alpha."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="area")
    x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1)
    return x * 2 - 1


def augment(x, is_tile, g):
    n = x.shape[0]
    out = x.clone()
    for i in range(n):
        if is_tile[i]:
            dy, dx = torch.randint(0, x.shape[-1], (2,), generator=g)
            out[i] = torch.roll(out[i], (int(dy), int(dx)), dims=(1, 2))
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    blur = torch.rand(n, generator=g) < 0.4
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None]) / 16
        out[blur] = nn.functional.conv2d(nn.functional.pad(out[blur], (1, 1, 1, 1), mode="replicate"),
                                         k.expand(4, 1, 3, 3).contiguous(), groups=4)
    out = out + torch.randn(out.shape, generator=g) * 0.04 * torch.rand(n, 1, 1, 1, generator=g)
    return out


class Classifier:
    def __init__(self, net, classes, size):
        self.net, self.classes, self.size = net.eval(), classes, size

    @classmethod
    def load(cls, path, threads=None):
        """classifier.safetensors + the classifier.json beside it (a file without "size" is a v1 32 px one)."""
        from safetensors.torch import load_file

        if threads:
            torch.set_num_threads(threads)
        with open(os.path.join(os.path.dirname(path), "classifier.json"), encoding="utf-8") as f:
            meta = json.load(f)
        net = Net(len(meta["classes"]))
        net.load_state_dict(load_file(path))
        return cls(net, meta["classes"], meta.get("size", 32))

    @torch.no_grad()
    def predict(self, u8, batch=256):
        out = []
        for i in range(0, len(u8), batch):
            dev = next(self.net.parameters()).device
            out.append(self.net(to_input(u8[i:i + batch], self.size).to(dev)).argmax(1).cpu())
        return torch.cat(out).numpy()


def _run_args(a):
    """The flags a checkpoint must agree with to be continued."""
    return {k: getattr(a, k) for k in ("vocab", "size", "n", "n_val", "epochs", "batch", "lr", "seed")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "runs", "classifier64"))
    ap.add_argument("--vocab", choices=["v1", "v2"], default="v2")
    ap.add_argument("--size", type=int, default=0, help="input pixels (default: 64 for v2, 32 for v1)")
    ap.add_argument("--n", type=int, default=16000)
    ap.add_argument("--n-val", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/classifier.pt (after its last epoch)")
    ap.add_argument("--data-workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes that generate the data (the same data for any N)")
    a = ap.parse_args()
    ckpt = os.path.join(a.out, "classifier.pt")
    if os.path.exists(ckpt) and not a.resume:
        sys.exit(f"{ckpt} exists: pass --resume to continue it (or use a new --out)")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    size = a.size or dataset.DEFAULT_SIZE[a.vocab]
    classes = dataset.VOCABS[a.vocab].classes
    t0 = time.time()
    tr = dataset.generate_parallel(a.n, a.seed, size, holdout=set(), vocab=a.vocab, workers=a.data_workers)
    va = dataset.generate_parallel(a.n_val, a.seed + 1, size, holdout=set(), vocab=a.vocab, workers=a.data_workers)
    print(f"data: {a.n} train / {a.n_val} val ({size} px, {len(classes)} classes) in {time.time() - t0:.0f} s",
          flush=True)
    x_tr, y_tr = to_input(tr["images"], size), torch.from_numpy(tr["labels"])
    net = Net(len(classes)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = a.epochs * (a.n // a.batch)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps)
    g = torch.Generator().manual_seed(a.seed)
    step, start, acc = 0, 0, float("nan")
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location="cpu", weights_only=False)  # load_state_dict moves to dev
        if st["args"] != _run_args(a):
            sys.exit(f"{ckpt} was made with {st['args']}, not {_run_args(a)}: use a new --out")
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sch.load_state_dict(st["sch"])
        g.set_state(st["gen"])
        step, start, acc = st["step"], st["epoch"], st["val_acc"]
        print(f"resumed after epoch {start} (val acc {acc:.4f})", flush=True)
    os.makedirs(a.out, exist_ok=True)
    for ep in range(start, a.epochs):
        net.train()
        perm = torch.randperm(a.n, generator=g)
        tot, t1 = 0.0, time.time()
        for i in range(a.n // a.batch):
            idx = perm[i * a.batch:(i + 1) * a.batch]
            x = augment(x_tr[idx], tr["is_tile"][idx.numpy()], g).to(dev)
            loss = nn.functional.cross_entropy(net(x), y_tr[idx].to(dev), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sch.step()
            step += 1
            tot += loss.item()
        clf = Classifier(net, classes, size)
        acc = float((clf.predict(va["images"]) == va["labels"]).mean())
        print(f"epoch {ep + 1}/{a.epochs} loss {tot / max(1, a.n // a.batch):.4f} val acc {acc:.4f} "
              f"({time.time() - t1:.0f} s)", flush=True)
        tmp = ckpt + ".tmp"
        torch.save({"epoch": ep + 1, "step": step, "val_acc": acc, "args": _run_args(a), "model": net.state_dict(),
                    "opt": opt.state_dict(), "sch": sch.state_dict(), "gen": g.get_state()}, tmp)
        os.replace(tmp, ckpt)
    from safetensors.torch import save_file

    save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, os.path.join(a.out, "classifier.safetensors"))
    with open(os.path.join(a.out, "classifier.json"), "w", encoding="utf-8") as f:
        json.dump({"classes": classes, "size": size, "vocab": a.vocab, "val_acc": acc, "n_train": a.n,
                   "epochs": a.epochs, "seed": a.seed}, f, indent=1)
    print(f"saved {a.out}/classifier.safetensors (val acc {acc:.4f})")


if __name__ == "__main__":
    main()
