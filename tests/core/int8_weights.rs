//! 8-bit weights: compressed-tensors' int8 channel-wise layout (`name` as `I8`, `name_scale`
//! f16 per output channel), dequantized at load by `loading/model_loading_utils/tensor_read.rs`.
//! The tiny-sd pipeline is quantized here, written once as I8 + scales and once as the f32
//! values `q * scale` that dequantization must give; both folders must generate the same image.

use std::path::Path;

use bevy_diffusion::pipeline::{self, NoHooks};
use bevy_diffusion::testing::weights;
use bevy_diffusion::tools::inspect::{InspectOptions, inspect};
use bevy_diffusion::{
    DiffusionError, GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion,
};
use bevy_diffusion_tests::tiny_sd_model;
use candle_core::{DType, Device};
use safetensors::tensor::{Dtype, TensorView};

use crate::loading::{copy_dir, scratch};

const COMPONENTS: [&str; 3] = [
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
];

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `int8/` (weights of rank >= 2 with >= 256 values as I8 + f16 `_scale`, the rest f32)
/// and `deq/` (every tensor f32, the quantized ones as `q * scale`) from the tiny-sd folder;
/// returns how many tensors were quantized.
fn quantize(root: &Path, skip_scale: Option<&str>) -> usize {
    let (int8, deq) = (root.join("int8"), root.join("deq"));
    copy_dir(&tiny_sd_model(), &int8);
    copy_dir(&tiny_sd_model(), &deq);
    let mut quantized = 0;
    for file in COMPONENTS {
        let tensors =
            candle_core::safetensors::load(tiny_sd_model().join(file), &Device::Cpu).unwrap();
        let mut q_out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut d_out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in tensors {
            let shape = t.dims().to_vec();
            let values = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let values = values.to_vec1::<f32>().unwrap();
            if shape.len() < 2 || values.len() < 256 {
                q_out.push((name.clone(), Dtype::F32, shape.clone(), le_bytes(&values)));
                d_out.push((name, Dtype::F32, shape, le_bytes(&values)));
                continue;
            }
            quantized += 1;
            let inner = values.len() / shape[0];
            let (mut q, mut w, mut scales) = (Vec::new(), Vec::new(), Vec::new());
            for row in values.chunks(inner) {
                let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                let scale = half::f16::from_f32(if max > 0.0 { max / 127.0 } else { 1.0 });
                let s = scale.to_f32();
                for &x in row {
                    let v = (x / s).round().clamp(-127.0, 127.0) as i8;
                    q.push(v as u8);
                    w.push(f32::from(v) * s);
                }
                scales.extend(scale.to_bits().to_le_bytes());
            }
            if skip_scale != Some(name.as_str()) {
                q_out.push((format!("{name}_scale"), Dtype::F16, vec![shape[0]], scales));
            }
            q_out.push((name.clone(), Dtype::I8, shape.clone(), q));
            d_out.push((name, Dtype::F32, shape, le_bytes(&w)));
        }
        for (dir, out) in [(&int8, q_out), (&deq, d_out)] {
            let views: Vec<(String, TensorView<'_>)> = out
                .iter()
                .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            safetensors::serialize_to_file(views, None, &dir.join(file)).unwrap();
        }
    }
    quantized
}

fn image(dir: &Path) -> image::RgbaImage {
    let model = StableDiffusion::load(dir, &LoadOptions::default()).unwrap();
    let request = GenerationRequest {
        prompt: "a mossy stone wall".into(),
        seed: 7,
        width: 64,
        height: 64,
        num_inference_steps: Some(3),
        guidance_scale: Some(5.0),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    model
        .run_with_threads(Some(1), || {
            pipeline::generate(&model, &request, &mut NoHooks)
        })
        .unwrap()
        .image
}

#[test]
fn int8_weights_load_as_their_dequantized_values() {
    let root = scratch("int8-same");
    let quantized = quantize(&root, None);
    assert!(quantized > 20, "only {quantized} tensors quantized");
    // The int8 folder really holds I8 tensors, at about a quarter of the f32 bytes.
    let header = weights::read_header(&root.join("int8").join(COMPONENTS[0]), u64::MAX).unwrap();
    assert!(header.tensors.values().any(|m| m.dtype == "I8"));
    let size = |dir: &str| {
        std::fs::metadata(root.join(dir).join(COMPONENTS[0]))
            .unwrap()
            .len()
    };
    assert!(
        size("int8") * 3 < size("deq"),
        "{} vs {}",
        size("int8"),
        size("deq")
    );

    // `texgen inspect`: no problems, the same parameter counts (the scales are not parameters).
    let report = |dir: &Path| inspect(dir, &InspectOptions::default());
    let (q, d) = (report(&root.join("int8")), report(&root.join("deq")));
    assert!(q.problems.is_empty(), "{:?}", q.problems);
    for (qc, dc) in q.components.iter().zip(&d.components) {
        assert_eq!(qc.parameters, dc.parameters, "{:?}", qc.kind);
        assert!(qc.dtypes.contains_key("I8"), "{:?}", qc.dtypes);
    }

    let (a, b) = (image(&root.join("int8")), image(&root.join("deq")));
    assert_eq!(a.dimensions(), (64, 64));
    assert!(
        a == b,
        "the int8 folder's image differs from its dequantized f32 copy's"
    );
    // And the quantization did change the weights (the test would pass vacuously otherwise).
    assert!(image(&tiny_sd_model()) != a);
}

#[test]
fn an_int8_weight_without_its_scale_is_a_typed_error_naming_it() {
    let root = scratch("int8-noscale");
    let name = "conv_in.weight";
    quantize(&root, Some(name));
    let e = StableDiffusion::load(&root.join("int8"), &LoadOptions::default())
        .err()
        .expect("the load must fail");
    match &e {
        DiffusionError::BadSafetensors { path, reason } => {
            assert!(path.ends_with(COMPONENTS[0]), "{}", path.display());
            assert!(
                reason.contains(name) && reason.contains("conv_in.weight_scale"),
                "{reason}"
            );
        }
        other => panic!("expected BadSafetensors, got {other:?}"),
    }
    // `texgen inspect`'s dry build finds the same problem without reading any weights.
    let report = inspect(&root.join("int8"), &InspectOptions::default());
    let found: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        found.iter().any(|p| p.contains("conv_in.weight_scale")),
        "{found:?}"
    );
}
