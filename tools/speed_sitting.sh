#!/usr/bin/env bash
# One same-sitting speed comparison for issue 14: the PyTorch/diffusers anchor and our bench,
# run one after the other (anchor, bench, anchor, bench, ...) on 2 threads, then the issue's
# table with the ratios (ours / PyTorch; below 1.0 = we are faster) from the medians of the
# rounds. Run it on a quiet machine: it takes ~10-15 minutes a round with the full anchor.
#
# usage: tools/speed_sitting.sh [--rounds N] [--quick] [--dry-parse DIR]
#   --rounds N     anchor/bench pairs (default 2)
#   --quick        short check of the script itself: TAESD only (anchor's TAESD line comes from a
#                  small inline snippet, ours from `bench --only taesd`), one round
#   --dry-parse D  only print the table from the logs already in D (anchor-*.log, bench-*.log)
#   --skip-bf16    run the anchor without --bf16 (on a CPU without AVX-512 BF16 PyTorch's bf16
#                  is 10-20x slower than its f32: measured 0.4 GFLOP/s for a bf16 torch.mm on the
#                  2-core AVX2 dev machine, so its bf16 UNet step alone can take many minutes)
# env: ANCHOR_PY   python with torch + diffusers (default /work/venv-anchor/bin/python)
#      ANCHOR      perf_anchor.py (default ../shared/tools/perf_anchor.py next to the repo)
#      THREADS     threads for both sides (default 2)
#      OUT         folder for the logs (default target/speed_sitting/<UTC time>)
#      ANCHOR_TIMEOUT  seconds one anchor run may take (default 3600); the lines it printed
#                  before being stopped still count
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS=2
QUICK=0
PARSE_ONLY=""
BF16="--bf16"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --quick) QUICK=1; ROUNDS=1; shift ;;
        --dry-parse) PARSE_ONLY="$2"; shift 2 ;;
        --skip-bf16) BF16=""; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "speed_sitting: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$ROUNDS" in ''|*[!0-9]*) echo "speed_sitting: --rounds needs a number" >&2; exit 2 ;; esac
if [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 10 ]; then
    echo "speed_sitting: --rounds must be 1..10" >&2; exit 2
fi
ANCHOR_PY="${ANCHOR_PY:-/work/venv-anchor/bin/python}"
ANCHOR="${ANCHOR:-$ROOT/../shared/tools/perf_anchor.py}"
[ -f "$ANCHOR" ] || ANCHOR="/work/shared/tools/perf_anchor.py"
THREADS="${THREADS:-2}"
OUT="${OUT:-$ROOT/target/speed_sitting/$(date -u +%Y%m%dT%H%M%SZ)}"

if [ -z "$PARSE_ONLY" ]; then
    mkdir -p "$OUT"
    export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
    echo "speed_sitting: logs in $OUT; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$ROOT" && cargo build --release -p bevy_diffusion --no-default-features --features default_model --example bench 2>&1 | tail -1)
    BENCH=(cargo run --release -q -p bevy_diffusion --no-default-features --features default_model --example bench --)
    for r in $(seq 1 "$ROUNDS"); do
        echo "round $r/$ROUNDS: anchor ($(date -u +%H:%M:%S))"
        if [ "$QUICK" = 1 ]; then
            "$ANCHOR_PY" - "$THREADS" > "$OUT/anchor-$r.log" 2>&1 <<'PY'
import sys, time, torch
from diffusers import AutoencoderTiny
torch.set_num_threads(int(sys.argv[1]))
taesd = AutoencoderTiny().eval()
z = torch.randn(1, 4, 64, 64)
with torch.inference_mode():
    taesd.decode(z); best = 1e9
    for _ in range(2):
        s = time.perf_counter(); taesd.decode(z); best = min(best, time.perf_counter() - s)
print(f"taesd decode 512px: {best:.3f} s")
PY
        else
            timeout "${ANCHOR_TIMEOUT:-3600}" "$ANCHOR_PY" "$ANCHOR" "$THREADS" --turbo $BF16 \
                > "$OUT/anchor-$r.log" 2>&1 || echo "  (anchor ended with status $?)"

        fi
        echo "round $r/$ROUNDS: bench ($(date -u +%H:%M:%S))"
        if [ "$QUICK" = 1 ]; then
            (cd "$ROOT" && "${BENCH[@]}" --only taesd) > "$OUT/bench-$r.log" 2>&1
        else
            (cd "$ROOT" && "${BENCH[@]}") > "$OUT/bench-$r.log" 2>&1
            if [ -n "$BF16" ]; then
                (cd "$ROOT" && "${BENCH[@]}" --dtype bf16 --only unet) > "$OUT/bench-bf16-$r.log" 2>&1
            fi
        fi
    done
    PARSE_ONLY="$OUT"
fi

python3 - "$PARSE_ONLY" <<'PY'
import glob, re, statistics, sys
d = sys.argv[1]
line = re.compile(r"^(.*?): ([0-9.]+) (s|GFLOP/s)\b")
def read(pattern):
    vals = {}
    for path in sorted(glob.glob(f"{d}/{pattern}")):
        for l in open(path, errors="replace"):
            m = line.match(l.strip())
            if m:
                vals.setdefault(m.group(1), []).append(float(m.group(2)))
    return {k: statistics.median(v) for k, v in vals.items()}
anchor, ours, ours_bf16 = read("anchor-*.log"), read("bench-[0-9]*.log"), read("bench-bf16-*.log")
notes = sorted({l.strip() for p in glob.glob(f"{d}/bench-*.log") for l in open(p) if l.startswith("note:")})
rows = [
    # stage, anchor label, our label, our source, target ratio
    ("UNet step 512², batch 2 (CFG), f32", "unet step 512px batch2", "sd15 unet step (batch 2, 64x64 latent = 512 px)", ours, 1.0),
    ("VAE decode 512², f32", "vae decode 512px", "sd15 vae decode (512x512)", ours, 1.0),
    ("UNet step 512², batch 2, bf16 (PyTorch bf16 vs ours --dtype bf16)", "unet step 512px batch2 bf16", "sd15 unet step (batch 2, 64x64 latent = 512 px)", ours_bf16, 1.0),
    ("TAESD decode 512², bf16 (PyTorch bf16 vs ours f32)", "taesd decode 512px bf16", "taesd decode 512px", ours, 1.0),
    ("TAESD decode 512² vs PyTorch's full VAE decode 512²", "vae decode 512px", "taesd decode 512px", ours, 1 / 15),
    ("TAESD decode 512² vs PyTorch's TAESD", "taesd decode 512px", "taesd decode 512px", ours, None),
    ("SD-Turbo arch 512², 1 step, full VAE", "sd-turbo arch 512px 1 step, full vae", "sd-turbo arch 512px 1 step, full vae", ours, None),
    ("SD-Turbo arch 512², 1 step + TAESD", "sd-turbo arch 512px 1 step, taesd", "sd-turbo arch 512px 1 step, taesd", ours, 1.0),
]
print(f"\n| stage | PyTorch | ours | ratio | target |")
print("|---|---|---|---|---|")
for stage, a, o, src, target in rows:
    pa, po = anchor.get(a), src.get(o)
    if pa is None or po is None:
        continue
    ratio = po / pa
    t = "-" if target is None else (f"≤ {target:.3g}x: " + ("met" if ratio <= target else f"missed by {ratio / target:.2f}x"))
    print(f"| {stage} | {pa:.3f} s | {po:.3f} s | {ratio:.3f}x | {t} |")
for k in ("matmul 2048 float32", "matmul 2048 bfloat16"):
    if k in anchor:
        print(f"PyTorch {k}: {anchor[k]:.0f} GFLOP/s")
for n in notes:
    print(n)
if not anchor or not ours:
    print(f"speed_sitting: missing figures (anchor {len(anchor)}, ours {len(ours)}); see the logs in {d}", file=sys.stderr)
    sys.exit(1)
PY
