//! Scheduler parity with diffusers, no model needed: every pipeline case of the tiny-sd fixture
//! replays diffusers' per-step scheduler inputs (`latents_in`, guided `noise_pred`, the noise
//! drawn inside `step`) and compares timesteps (exactly), sigmas, `init_noise_sigma`,
//! `scale_model_input`, `prev_sample` and `pred_original_sample` with the stored tensors.
//! Plus unit tests of the spacing rules, prediction types, config parsing and the builder.

use std::collections::HashMap;
use std::path::Path;

use bevy_diffusion::DiffusionError;
use bevy_diffusion::noise::{NoiseSource, ReplayNoise};
use bevy_diffusion::schedulers::config::parse_lenient_json;
use bevy_diffusion::schedulers::schedule::NoiseSchedule;
use bevy_diffusion::schedulers::{
    PredictionType, Scheduler, SchedulerConfig, SchedulerKind, TimestepSpacing, build_scheduler,
};
use bevy_diffusion_tests::{assert_close, max_abs_diff, tiny_sd_dir, tiny_sd_model};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

/// The fixture's reference tensors and references.json. (Loaded here rather than with
/// `References::load()` because references.json holds Python's `-Infinity`, which strict
/// serde_json refuses; [`parse_lenient_json`] reads it.)
struct Refs {
    tensors: HashMap<String, Tensor>,
    json: Value,
}

impl Refs {
    fn load() -> Self {
        let dir = tiny_sd_dir();
        let tensors =
            candle_core::safetensors::load(dir.join("references.safetensors"), &Device::Cpu)
                .expect("references.safetensors");
        let text = std::fs::read_to_string(dir.join("references.json")).expect("references.json");
        let json = parse_lenient_json(&text).expect("references.json parses");
        Self { tensors, json }
    }

    fn get(&self, name: &str) -> Tensor {
        let t = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor `{name}` not found"));
        t.to_dtype(DType::F32).unwrap()
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn case(&self, case: &str) -> &Value {
        &self.json["cases"][case]
    }
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn base_config() -> SchedulerConfig {
    SchedulerConfig::from_file(
        &tiny_sd_model()
            .join("scheduler")
            .join("scheduler_config.json"),
    )
    .unwrap()
}

fn case_config(refs: &Refs, case: &str) -> SchedulerConfig {
    SchedulerConfig::from_value(&refs.case(case)["scheduler_config"], Path::new(case)).unwrap()
}

/// (case, kind, spacing override of the request relative to the base DDIM config)
const CASES: &[(&str, SchedulerKind, Option<TimestepSpacing>)] = &[
    ("pipe_ddim4", SchedulerKind::Ddim, None),
    (
        "pipe_euler6",
        SchedulerKind::Euler,
        Some(TimestepSpacing::Linspace),
    ),
    ("pipe_img2img_s05", SchedulerKind::Ddim, None),
    (
        "pipe_turbo_euler_a1",
        SchedulerKind::EulerAncestral,
        Some(TimestepSpacing::Trailing),
    ),
    ("pipe_dpmpp2m8", SchedulerKind::DpmSolverMultistep, None),
    (
        "pipe_dpmpp2m_karras8",
        SchedulerKind::DpmSolverMultistepKarras,
        None,
    ),
    ("pipe_lcm4", SchedulerKind::Lcm, None),
    ("pipe_euler_a4", SchedulerKind::EulerAncestral, None),
];

/// max|a - r| / max(1, max|r|), the quantity the README's tolerance bounds by 1e-4.
fn rel(actual: &Tensor, reference: &Tensor) -> f32 {
    let (d, s) = max_abs_diff(actual, reference);
    d / s.max(1.0)
}

/// The unit noise `step()` drew in diffusers for this case, in draw order.
fn step_noises(refs: &Refs, case: &str) -> Vec<Tensor> {
    let c = refs.case(case);
    let calls: Vec<&str> = c["randn_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    if calls.contains(&"scheduler_noise(zeros)") {
        // pipe_turbo_euler_a1: the one Euler-a draw (sigma_up = 0) was zeros and not stored.
        let shape = refs
            .get(&format!("{case}/step_00/noise_pred"))
            .dims()
            .to_vec();
        return vec![Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()];
    }
    match c.get("step_noise_tensors").and_then(Value::as_array) {
        Some(names) => names
            .iter()
            .map(|n| refs.get(n.as_str().unwrap()))
            .collect(),
        None => Vec::new(),
    }
}

/// Checks one built scheduler against the case's schedule; returns the worst relative diff
/// of sigmas / init_noise_sigma.
fn check_schedule(refs: &Refs, case: &str, s: &dyn Scheduler, what: &str) -> f32 {
    let c = refs.case(case);
    assert_eq!(
        s.timesteps(),
        f64s(&c["timesteps"]).as_slice(),
        "{case} ({what}): timesteps"
    );
    let steps = c["steps"].as_u64().unwrap() as usize;
    assert_eq!(s.timesteps().len(), steps, "{case}: one timestep per step");
    let init = c["init_noise_sigma"].as_f64().unwrap();
    let init_rel = ((s.init_noise_sigma() - init).abs() / init.max(1.0)) as f32;
    assert!(
        init_rel <= 1e-6,
        "{case} ({what}): init_noise_sigma {} vs {init}",
        s.init_noise_sigma()
    );
    let mut worst = init_rel;
    let name = format!("{case}/sigmas");
    if refs.has(&name) {
        let sigmas = s
            .sigmas()
            .unwrap_or_else(|| panic!("{case}: scheduler has no sigmas"));
        let actual = Tensor::new(sigmas, &Device::Cpu).unwrap();
        assert_close(&format!("{name} ({what})"), &actual, &refs.get(&name));
        worst = worst.max(rel(&actual, &refs.get(&name)));
    } else {
        assert!(s.sigmas().is_none(), "{case}: DDIM/LCM have no sigmas");
    }
    worst
}

#[derive(Default, Debug)]
struct Worst {
    unet_input: f32,
    latents_out: f32,
    pred_original_sample: f32,
}

/// Replays every step of `case` with diffusers' own inputs (`chained = false`) or from the first
/// `latents_in` on, feeding our own `prev_sample` forward (`chained = true`, also compares
/// `final_latents`).
fn replay(refs: &Refs, case: &str, scheduler: &mut dyn Scheduler, chained: bool) -> Worst {
    let c = refs.case(case);
    let steps = c["steps"].as_u64().unwrap() as usize;
    let unet_timesteps = f64s(&c["unet_timesteps"]);
    let run = c["n_steps_run"].as_u64().unwrap() as usize;
    assert_eq!(unet_timesteps.len(), run);
    let begin = steps - run;
    let mut noise = ReplayNoise::new(step_noises(refs, case));
    let mut worst = Worst::default();
    let mut latents = refs.get(&format!("{case}/step_00/latents_in"));
    for (k, &unet_timestep) in unet_timesteps.iter().enumerate() {
        let index = begin + k;
        let p = |t: &str| format!("{case}/step_{k:02}/{t}");
        assert_eq!(
            scheduler.timesteps()[index],
            unet_timestep,
            "{case}: UNet timestep of step {k}"
        );
        if !chained {
            latents = refs.get(&p("latents_in"));
        }
        let unet_input = scheduler.scale_model_input(&latents, index).unwrap();
        let stored_input = refs.get(&p("unet_input")).narrow(0, 0, 1).unwrap();
        let noise_pred = refs.get(&p("noise_pred"));
        let out = scheduler
            .step(&noise_pred, index, &latents, &mut noise)
            .unwrap();
        let mode = if chained { "chained" } else { "replayed" };
        assert_close(
            &format!("{} ({mode})", p("unet_input")),
            &unet_input,
            &stored_input,
        );
        assert_close(
            &format!("{} ({mode})", p("latents_out")),
            &out.prev_sample,
            &refs.get(&p("latents_out")),
        );
        assert_close(
            &format!("{} ({mode})", p("pred_original_sample")),
            &out.pred_original_sample,
            &refs.get(&p("pred_original_sample")),
        );
        worst.unet_input = worst.unet_input.max(rel(&unet_input, &stored_input));
        worst.latents_out = worst
            .latents_out
            .max(rel(&out.prev_sample, &refs.get(&p("latents_out"))));
        worst.pred_original_sample = worst.pred_original_sample.max(rel(
            &out.pred_original_sample,
            &refs.get(&p("pred_original_sample")),
        ));
        latents = out.prev_sample;
    }
    // Exactly as many draws as diffusers made.
    assert!(
        noise.randn(&[1], &Device::Cpu).is_err(),
        "{case}: the scheduler drew fewer noise tensors than diffusers"
    );
    if chained {
        let name = format!("{case}/final_latents");
        assert_close(&name, &latents, &refs.get(&name));
        worst.latents_out = worst.latents_out.max(rel(&latents, &refs.get(&name)));
    }
    worst
}

#[test]
fn every_pipeline_case_matches_diffusers_step_by_step() {
    let refs = Refs::load();
    let base = base_config();
    assert_eq!(base.default_kind(), SchedulerKind::Ddim);
    for &(case, kind, spacing) in CASES {
        let c = refs.case(case);
        let steps = c["steps"].as_u64().unwrap() as usize;
        // From the case's full config (diffusers' resulting scheduler config) …
        let config = case_config(&refs, case);
        assert_eq!(
            config.default_kind(),
            kind,
            "{case}: default kind of its _class_name"
        );
        assert_eq!(
            config.native_kind(),
            Some(kind),
            "{case}: implemented exactly"
        );
        let mut from_case = build_scheduler(&config, kind, steps, None).unwrap();
        // … and from the folder's DDIM config + the request's kind and spacing, as the pipeline does.
        let mut from_base = build_scheduler(&base, kind, steps, spacing).unwrap();
        let sched_rel = check_schedule(&refs, case, from_case.as_ref(), "case config").max(
            check_schedule(&refs, case, from_base.as_ref(), "base config + request"),
        );
        assert_eq!(
            from_case.sigmas(),
            from_base.sigmas(),
            "{case}: both builds agree"
        );
        assert_eq!(from_case.init_noise_sigma(), from_base.init_noise_sigma());

        let replayed = replay(&refs, case, from_case.as_mut(), false);
        let chained = replay(&refs, case, from_base.as_mut(), true);
        println!(
            "{case:22} {kind:?}: timesteps exact, sigmas/init_noise_sigma rel {sched_rel:.1e}; replayed steps: \
             unet_input {:.1e}, latents_out {:.1e}, pred_original_sample {:.1e}; chained: latents_out+final {:.1e}, \
             x0 {:.1e}",
            replayed.unet_input,
            replayed.latents_out,
            replayed.pred_original_sample,
            chained.latents_out,
            chained.pred_original_sample,
        );
    }
}

#[test]
fn img2img_add_noise_starts_at_step_index_4() {
    let refs = Refs::load();
    let case = "pipe_img2img_s05";
    let s = build_scheduler(&base_config(), SchedulerKind::Ddim, 8, None).unwrap();
    assert_eq!(s.timesteps()[4], 376.0);
    assert_eq!(refs.case(case)["latent_timestep"].as_f64(), Some(376.0));
    let noisy = s
        .add_noise(
            &refs.get(&format!("{case}/image_latents")),
            &refs.get(&format!("{case}/noise")),
            4,
        )
        .unwrap();
    let reference = refs.get(&format!("{case}/step_00/latents_in"));
    assert_close("pipe_img2img_s05 add_noise", &noisy, &reference);
    println!(
        "img2img add_noise: max|diff| {:.1e}",
        max_abs_diff(&noisy, &reference).0
    );
}

#[test]
fn spacing_rules_for_step_counts_that_do_not_divide_1000() {
    let base = base_config(); // leading, steps_offset 1
    let ts = |kind, n, spacing| {
        build_scheduler(&base, kind, n, spacing)
            .unwrap()
            .timesteps()
            .to_vec()
    };
    use SchedulerKind::*;
    use TimestepSpacing::*;
    // trailing: round(arange(1000, 0, -1000/n)) - 1, for every class.
    for kind in [Ddim, Euler, EulerAncestral, DpmSolverMultistep] {
        assert_eq!(
            ts(kind, 3, Some(Trailing)),
            vec![999.0, 666.0, 332.0],
            "{kind:?}"
        );
        assert_eq!(
            ts(kind, 7, Some(Trailing)),
            vec![999.0, 856.0, 713.0, 570.0, 428.0, 285.0, 142.0],
            "{kind:?}"
        );
    }
    // leading: arange(n) * (1000 // n) reversed + steps_offset (DPM: n + 1 points, last dropped).
    assert_eq!(ts(Ddim, 3, None), vec![667.0, 334.0, 1.0]);
    assert_eq!(
        ts(EulerAncestral, 7, None),
        vec![853.0, 711.0, 569.0, 427.0, 285.0, 143.0, 1.0]
    );
    assert_eq!(
        ts(DpmSolverMultistep, 7, None),
        vec![876.0, 751.0, 626.0, 501.0, 376.0, 251.0, 126.0]
    );
    // linspace: DDIM rounds half to even, Euler keeps the float32 values, DPM uses n + 1 points.
    assert_eq!(
        ts(Ddim, 7, Some(Linspace)),
        vec![999.0, 832.0, 666.0, 500.0, 333.0, 166.0, 0.0]
    );
    assert_eq!(
        ts(Euler, 7, Some(Linspace)),
        vec![999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]
    );
    assert_eq!(ts(Euler, 3, Some(Linspace)), vec![999.0, 499.5, 0.0]);
    assert_eq!(
        ts(DpmSolverMultistep, 3, Some(Linspace)),
        vec![999.0, 666.0, 333.0]
    );
    // LCM ignores spacing.
    assert_eq!(ts(Lcm, 3, Some(Trailing)), vec![999.0, 679.0, 339.0]);
    // Euler's init_noise_sigma: sqrt(max^2 + 1) for leading, max for linspace/trailing.
    let lead = build_scheduler(&base, Euler, 7, None).unwrap();
    let max = lead.sigmas().unwrap()[0] as f64;
    assert!((lead.init_noise_sigma() - (max * max + 1.0).sqrt()).abs() < 1e-5);
    let trail = build_scheduler(&base, Euler, 7, Some(Trailing)).unwrap();
    assert_eq!(trail.init_noise_sigma(), trail.sigmas().unwrap()[0] as f64);
}

/// x_t = add_noise(x0, eps) in each scheduler's own parametrisation; the model output that
/// predicts exactly (eps, v or x0) must give back x0 as `pred_original_sample`.
#[test]
fn every_prediction_type_recovers_x0() {
    let dev = Device::Cpu;
    let ramp = Tensor::arange(0f32, 64.0, &dev)
        .unwrap()
        .reshape((1, 4, 4, 4))
        .unwrap();
    let x0 = ramp.affine(1.0 / 16.0, -2.0).unwrap();
    let eps = ramp.cos().unwrap().affine(1.3, 0.0).unwrap();
    let kinds = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::DpmSolverMultistepKarras,
        SchedulerKind::Lcm,
    ];
    for prediction in ["epsilon", "v_prediction", "sample"] {
        let json = format!(
            r#"{{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                "beta_end": 0.012, "steps_offset": 1, "clip_sample": false, "prediction_type": "{prediction}"}}"#
        );
        let config = SchedulerConfig::from_json_str(&json, Path::new("test.json")).unwrap();
        for kind in kinds {
            if kind == SchedulerKind::EulerAncestral && prediction == "sample" {
                let err = build_scheduler(&config, kind, 4, None)
                    .err()
                    .expect("euler-a refuses sample");
                assert!(
                    matches!(err, DiffusionError::UnsupportedConfig { ref field, .. } if field == "prediction_type")
                );
                continue;
            }
            let mut s = build_scheduler(&config, kind, 4, None).unwrap();
            let index = 1;
            let x_t = s.add_noise(&x0, &eps, index).unwrap();
            // abar of this step: the table's for DDIM/LCM, 1/(sigma^2+1) for sigma schedulers.
            let abar = match s.sigmas() {
                Some(sigmas) => 1.0 / ((sigmas[index] as f64).powi(2) + 1.0),
                None => {
                    let params = config.resolve(kind).unwrap();
                    NoiseSchedule::new(&params, false).alphas_cumprod[s.timesteps()[index] as usize]
                        as f64
                }
            };
            let (a, b) = (abar.sqrt(), (1.0 - abar).sqrt());
            let model_output = match prediction {
                "epsilon" => eps.clone(),
                "v_prediction" => {
                    (eps.affine(a, 0.0).unwrap() - x0.affine(b, 0.0).unwrap()).unwrap()
                }
                _ => x0.clone(),
            };
            let mut replay = ReplayNoise::new(vec![eps.clone()]);
            let out = s.step(&model_output, index, &x_t, &mut replay).unwrap();
            let expected = if kind == SchedulerKind::Lcm {
                // denoised = c_out * x0 + c_skip * x_t (c_out ~ 1, c_skip ~ 1e-8 at t = 759)
                let u = s.timesteps()[index] * 10.0;
                ((&x0 * (u / (u * u + 0.25).sqrt())).unwrap()
                    + (&x_t * (0.25 / (u * u + 0.25))).unwrap())
                .unwrap()
            } else {
                x0.clone()
            };
            let (diff, _) = max_abs_diff(&out.pred_original_sample, &expected);
            assert!(diff < 2e-5, "{kind:?} {prediction}: x0 off by {diff}");
        }
    }
}

#[test]
fn dpm_solver_history_is_per_run() {
    // img2img starts mid-schedule: the first step taken is first order (= DDIM-like), so a fresh
    // scheduler started at index 3 must equal one that ran nothing before.
    let refs = Refs::load();
    let case = "pipe_dpmpp2m8";
    let config = case_config(&refs, case);
    let p = |k: usize, t: &str| refs.get(&format!("{case}/step_{k:02}/{t}"));
    let mut fresh = build_scheduler(&config, SchedulerKind::DpmSolverMultistep, 8, None).unwrap();
    let mut none = ReplayNoise::new(Vec::<Tensor>::new());
    let first = fresh
        .step(&p(3, "noise_pred"), 3, &p(3, "latents_in"), &mut none)
        .unwrap();
    // First order by hand: x_{i+1} = (s_{i+1}/s_i) x - alpha_{i+1} (e^{-h} - 1) x0.
    let sig = fresh.sigmas().unwrap().to_vec();
    let asl = |s: f32| {
        let s = s as f64;
        let a = 1.0 / (s * s + 1.0).sqrt();
        (a, s * a, a.ln() - (s * a).ln())
    };
    let ((_, s0, l0), (a1, s1, l1)) = (asl(sig[3]), asl(sig[4]));
    let expected = ((p(3, "latents_in") * (s1 / s0)).unwrap()
        - (&first.pred_original_sample * (a1 * ((l0 - l1).exp() - 1.0))).unwrap())
    .unwrap();
    let (diff, _) = max_abs_diff(&first.prev_sample, &expected);
    assert!(diff < 1e-5, "first step of a run is first order: {diff}");
    // The stored step 3 is second order, so it must differ from the first-order one.
    let (diff, _) = max_abs_diff(&first.prev_sample, &p(3, "latents_out"));
    assert!(diff > 1e-3, "stored step 3 is second order");
}

#[test]
fn config_parsing_defaults_and_errors() {
    let path = Path::new("scheduler/scheduler_config.json");
    // An unknown beta_schedule is refused, naming the field.
    let err = SchedulerConfig::from_json_str(r#"{"beta_schedule": "sigmoid"}"#, path).unwrap_err();
    assert!(
        matches!(err, DiffusionError::UnsupportedConfig { ref field, .. } if field == "beta_schedule"),
        "{err}"
    );
    assert!(
        err.to_string().contains("scheduler_config.json") && err.to_string().contains("sigmoid"),
        "{err}"
    );
    // Wrong types name the field too.
    for (json, field) in [
        (r#"{"num_train_timesteps": "many"}"#, "num_train_timesteps"),
        (r#"{"steps_offset": -1}"#, "steps_offset"),
        (r#"{"clip_sample": 1}"#, "clip_sample"),
        (r#"{"beta_end": 2.0}"#, "beta_end"),
        (r#"{"timestep_spacing": "middle"}"#, "timestep_spacing"),
        (
            r#"{"prediction_type": "flow_prediction"}"#,
            "prediction_type",
        ),
        (
            r#"{"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}"#,
            "trained_betas",
        ),
    ] {
        let err = SchedulerConfig::from_json_str(json, path).unwrap_err();
        let named = match &err {
            DiffusionError::InvalidConfig { field: f, .. }
            | DiffusionError::UnsupportedConfig { field: f, .. } => f == field,
            _ => false,
        };
        assert!(named, "{json}: {err}");
    }
    assert!(SchedulerConfig::from_json_str("{not json", path).is_err());
    assert!(matches!(
        SchedulerConfig::from_file(Path::new("/nonexistent/scheduler_config.json")),
        Err(DiffusionError::Io { .. })
    ));
    // Python's -Infinity (DPM-Solver's lambda_min_clipped) parses; strings are left alone.
    let c = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "x": "NaN -Infinity"}"#,
        path,
    )
    .unwrap();
    assert_eq!(c.lambda_min_clipped, Some(f64::NEG_INFINITY));
    assert_eq!(c.default_kind(), SchedulerKind::DpmSolverMultistep);
    // Thresholding is refused by name where it would be used, ignored where not.
    let c = SchedulerConfig::from_json_str(r#"{"thresholding": true}"#, path).unwrap();
    let err = build_scheduler(&c, SchedulerKind::Ddim, 4, None)
        .err()
        .unwrap();
    assert!(
        matches!(err, DiffusionError::UnsupportedConfig { ref field, .. } if field == "thresholding")
    );
    assert!(build_scheduler(&c, SchedulerKind::Euler, 4, None).is_ok());
    // Options of other solvers are refused by name for the class that reads them.
    let c = SchedulerConfig::from_json_str(r#"{"use_exponential_sigmas": true}"#, path).unwrap();
    assert!(build_scheduler(&c, SchedulerKind::Euler, 4, None).is_err());
    assert!(build_scheduler(&c, SchedulerKind::Ddim, 4, None).is_ok());
    // Class defaults fill missing keys: DDIM linear betas 1e-4..0.02, leading, clip_sample on;
    // LCM's defaults differ; Euler's spacing is linspace.
    let empty = SchedulerConfig::from_json_str("{}", path).unwrap();
    let ddim = empty.resolve(SchedulerKind::Ddim).unwrap();
    assert_eq!(
        (ddim.beta_start, ddim.beta_end, ddim.clip_sample),
        (0.0001, 0.02, true)
    );
    assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
    let lcm = empty.resolve(SchedulerKind::Lcm).unwrap();
    assert_eq!(
        (
            lcm.beta_start,
            lcm.original_inference_steps,
            lcm.timestep_scaling
        ),
        (0.00085, 50, 10.0)
    );
    assert_eq!(
        empty
            .resolve(SchedulerKind::Euler)
            .unwrap()
            .timestep_spacing,
        TimestepSpacing::Linspace
    );
    assert_eq!(
        empty.resolve(SchedulerKind::Ddim).unwrap().prediction_type,
        PredictionType::Epsilon
    );
    // `_use_default_values` keys take the target class's defaults.
    let c = SchedulerConfig::from_json_str(
        r#"{"timestep_spacing": "trailing", "_use_default_values": ["timestep_spacing"]}"#,
        path,
    )
    .unwrap();
    assert_eq!(c.timestep_spacing, None);
}

#[test]
fn default_kinds_and_fallbacks() {
    let kind = |json: &str| {
        SchedulerConfig::from_json_str(json, Path::new("s.json"))
            .unwrap()
            .default_kind()
    };
    assert_eq!(
        kind(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true}"#),
        SchedulerKind::Ddim
    );
    assert_eq!(
        kind(r#"{"_class_name": "LMSDiscreteScheduler"}"#),
        SchedulerKind::Euler
    );
    assert_eq!(
        kind(r#"{"_class_name": "EulerAncestralDiscreteScheduler"}"#),
        SchedulerKind::EulerAncestral
    );
    assert_eq!(
        kind(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true}"#),
        SchedulerKind::DpmSolverMultistepKarras
    );
    assert_eq!(
        kind(r#"{"_class_name": "UniPCMultistepScheduler"}"#),
        SchedulerKind::DpmSolverMultistep
    );
    let sde =
        r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}"#;
    assert_eq!(kind(sde), SchedulerKind::DpmSolverMultistep);
    let sde = SchedulerConfig::from_json_str(sde, Path::new("s.json")).unwrap();
    assert_eq!(
        sde.native_kind(),
        None,
        "sde-dpmsolver++ is not what dpmpp-2m runs"
    );
    assert_eq!(
        kind(r#"{"_class_name": "LCMScheduler"}"#),
        SchedulerKind::Lcm
    );
    assert_eq!(kind("{}"), SchedulerKind::Ddim);
    let pndm =
        SchedulerConfig::from_json_str(r#"{"_class_name": "PNDMScheduler"}"#, Path::new("s.json"))
            .unwrap();
    assert_eq!(pndm.native_kind(), None);
    // Names: unknown scheduler names are a typed error.
    let err = "heun".parse::<SchedulerKind>().unwrap_err();
    assert!(matches!(err, DiffusionError::UnknownScheduler(ref s) if s == "heun"));
    assert_eq!(
        "dpmpp-2m-karras".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::DpmSolverMultistepKarras
    );
}

#[test]
fn builder_refuses_bad_step_counts() {
    let base = base_config();
    // (DDIM leading + steps_offset 1 with 1000 steps would index abar[1000], as in diffusers.)
    let cases = [
        (SchedulerKind::Ddim, 0),
        (SchedulerKind::Euler, 1001),
        (SchedulerKind::Lcm, 51),
        (SchedulerKind::Ddim, 1000),
    ];
    for (kind, steps) in cases {
        let err = build_scheduler(&base, kind, steps, None).err().unwrap();
        assert!(
            matches!(
                err,
                DiffusionError::InvalidRequest {
                    field: "num_inference_steps",
                    ..
                }
            ),
            "{kind:?} {steps}: {err}"
        );
    }
    assert_eq!(
        build_scheduler(&base, SchedulerKind::Lcm, 50, None)
            .unwrap()
            .timesteps()
            .len(),
        50
    );
    assert_eq!(
        build_scheduler(&base, SchedulerKind::Ddim, 999, None)
            .unwrap()
            .timesteps()[0],
        999.0
    );
    let trailing = build_scheduler(
        &base,
        SchedulerKind::Ddim,
        1000,
        Some(TimestepSpacing::Trailing),
    )
    .unwrap();
    assert_eq!(trailing.timesteps().len(), 1000);
    // A step index past the schedule is an error, not a panic.
    let s = build_scheduler(&base, SchedulerKind::Euler, 4, None).unwrap();
    let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(s.scale_model_input(&x, 4).is_err());
}

#[test]
fn zero_terminal_snr_and_karras_euler() {
    let path = Path::new("s.json");
    let c = SchedulerConfig::from_json_str(
        r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "rescale_betas_zero_snr": true, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}"#,
        path,
    )
    .unwrap();
    let params = c.resolve(SchedulerKind::Ddim).unwrap();
    let ddim = NoiseSchedule::new(&params, false);
    assert_eq!(
        *ddim.alphas_cumprod.last().unwrap(),
        0.0,
        "zero terminal SNR"
    );
    let plain = NoiseSchedule::new(
        &SchedulerConfig {
            rescale_betas_zero_snr: Some(false),
            ..c.clone()
        }
        .resolve(SchedulerKind::Ddim)
        .unwrap(),
        false,
    );
    assert!(
        (ddim.alphas_cumprod[0] - plain.alphas_cumprod[0]).abs() < 1e-6,
        "first abar kept"
    );
    // Sigma schedulers clamp abar_T to 2^-24: sigma_max = sqrt((1 - 2^-24) / 2^-24) ~ 4096.
    let euler = build_scheduler(&c, SchedulerKind::Euler, 4, None).unwrap();
    assert!(
        (euler.init_noise_sigma() - 4096.0).abs() < 1.0,
        "{}",
        euler.init_noise_sigma()
    );
    // DDIM with v_prediction at the zero-SNR timestep: x0 = -v, finite.
    let mut ddim_s = build_scheduler(&c, SchedulerKind::Ddim, 4, None).unwrap();
    assert_eq!(ddim_s.timesteps()[0], 999.0);
    let v = Tensor::ones((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let out = ddim_s
        .step(&v, 0, &v, &mut ReplayNoise::new(Vec::<Tensor>::new()))
        .unwrap();
    let x0 = out
        .pred_original_sample
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(x0.iter().all(|&x| (x + 1.0).abs() < 1e-6), "{x0:?}");

    // Euler with use_karras_sigmas (EulerDiscreteScheduler.from_config honours it): sigmas from
    // the interpolated first to last, fractional timesteps.
    let k = SchedulerConfig::from_json_str(
        r#"{"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "use_karras_sigmas": true, "timestep_spacing": "leading", "steps_offset": 1}"#,
        path,
    )
    .unwrap();
    let e = build_scheduler(&k, SchedulerKind::Euler, 5, None).unwrap();
    let no_karras = SchedulerConfig {
        use_karras_sigmas: Some(false),
        ..k.clone()
    };
    let plain = build_scheduler(&no_karras, SchedulerKind::Euler, 5, None).unwrap();
    let (sig, plain_sig) = (e.sigmas().unwrap(), plain.sigmas().unwrap());
    assert_eq!(sig.len(), 6);
    assert!(
        (sig[0] / plain_sig[0] - 1.0).abs() < 1e-6,
        "sigma_max = sigma(t_0)"
    );
    assert!(
        (sig[4] / plain_sig[4] - 1.0).abs() < 1e-6,
        "sigma_min = sigma(t_last)"
    );
    assert_eq!(sig[5], 0.0);
    assert!(sig.windows(2).all(|w| w[0] > w[1]));
    assert!(e.timesteps().windows(2).all(|w| w[0] > w[1]));
    assert!(
        (e.timesteps()[0] - 801.0).abs() < 1e-3,
        "leading starts at 4 * 200 + 1: {:?}",
        e.timesteps()
    );
    assert!(
        e.timesteps()[1].fract() != 0.0,
        "Karras timesteps are fractional: {:?}",
        e.timesteps()
    );
}
