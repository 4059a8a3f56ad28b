"""PyTorch's own bf16 error on the tiny-sd fixture, the figure our bf16 tolerance is compared with
(docs/speed.md, "bf16"): diffusers' UNet at t = 500 (`unet_t500`) in f32 and cast to bf16
(`.to(torch.bfloat16)`: weights and activations bf16, PyTorch's CPU kernels), each against the
fixture's stored f32 noise prediction, as max |diff| / max |ref| (what tests/core/bf16.rs prints
for ours).

usage: python tools/torch_bf16_error.py [FIXTURE_DIR]   (default tests/fixtures/tiny-sd)
needs torch + diffusers + safetensors (training/requirements.txt); measured with torch 2.15,
diffusers 0.42.1: f32 1.2e-6, bf16 1.28e-2."""
import os, sys
import torch
from safetensors.torch import load_file
from diffusers import UNet2DConditionModel

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'tiny-sd')
refs = load_file(os.path.join(root, 'references.safetensors'))
unet = UNet2DConditionModel.from_pretrained(os.path.join(root, 'model', 'unet')).eval()
x, t = refs['unet_t500/sample'], refs['unet_t500/timestep']
h, ref = refs['unet_t500/encoder_hidden_states'], refs['unet_t500/noise_pred']
scale = ref.abs().max().item()
with torch.inference_mode():
    f32 = unet(x, t, h).sample
    print(f"f32:  max|diff| / max|ref| = {(f32 - ref).abs().max().item() / scale:.3e}")
    bf16 = unet.to(torch.bfloat16)(x.bfloat16(), t, h.bfloat16()).sample.float()
    print(f"bf16: max|diff| / max|ref| = {(bf16 - ref).abs().max().item() / scale:.3e}")
