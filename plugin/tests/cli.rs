//! The `texgen` binary itself: exit codes, the one-line error, bake's summary and inspect's
//! report (the logic is tested on the core in `tests/core/bake.rs`).

mod support;

use std::path::Path;
use std::process::Output;

use support::{
    Scratch, error_line, fixture_model, model_with_a_bogus_scheduler, stderr, texgen, walk,
};

/// The last line of stderr is the one error line, and it is the only one.
fn assert_one_error_line(o: &Output) -> String {
    let line = error_line(o);
    let err = stderr(o);
    assert_eq!(err.lines().last(), Some(line.as_str()), "{err}");
    line
}

#[test]
fn bake_reports_items_summary_and_exit_code() {
    let dir = Scratch::new("bake");
    let manifest = dir.0.join("textures.ron");
    let model = fixture_model();
    std::fs::write(
        &manifest,
        format!(
            r#"(
    model: {:?},
    items: {{
        "wall": (prompt: "mossy stone wall", seed: 3, tiling: xy, width: 16, height: 16, num_inference_steps: 2),
        "bad":  (prompt: "oops", width: 100, num_inference_steps: 2),
        "coin": (prompt: "gold coin", kind: sprite, width: 16, height: 16, num_inference_steps: 1),
    }},
)"#,
            model.display().to_string()
        ),
    )
    .unwrap();
    let out = dir.0.join("out");
    let args = [
        "bake",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];

    let first = texgen(&args);
    let line = assert_one_error_line(&first);
    assert!(line.contains("1 of 3 items failed: bad"), "{line}");
    let err = stderr(&first);
    assert!(err.contains("baked 2, skipped 0, failed 1"), "{err}");
    assert!(err.contains("done    wall"), "{err}");
    assert!(
        err.contains("FAILED  bad: invalid request: `width` = 100"),
        "{err}"
    );
    assert!(out.join("wall.png").is_file() && out.join("coin.texgen.json").is_file());

    let second = texgen(&args);
    assert_one_error_line(&second);
    let err = stderr(&second);
    assert!(err.contains("baked 0, skipped 2, failed 1"), "{err}");
    assert!(
        !err.contains("loaded "),
        "an all-skipped bake loads no model: {err}"
    );

    // Without the bad item: exit 0.
    let good = dir.0.join("good.ron");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.contains("\"bad\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&good, text).unwrap();
    let ok = texgen(&[
        "bake",
        good.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stderr(&ok).contains("baked 0, skipped 2, failed 0"));
}

#[test]
fn a_malformed_manifest_is_one_line_naming_line_and_field() {
    let dir = Scratch::new("malformed");
    let manifest = dir.0.join("m.ron");
    std::fs::write(
        &manifest,
        "(\n  items: {\n    \"wall\": (prompt: \"x\", width: \"big\"),\n  },\n)\n",
    )
    .unwrap();
    let o = texgen(&["bake", manifest.to_str().unwrap(), "--out", "unused"]);
    let line = assert_one_error_line(&o);
    assert!(line.contains("m.ron:3:"), "{line}");
    assert!(line.contains("items.wall.width"), "{line}");
}

#[test]
fn inspect_exit_codes() {
    let ok = texgen(&["inspect", fixture_model().to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let report = String::from_utf8_lossy(&ok.stdout);
    assert!(report.contains("family        SD1.x"), "{report}");
    assert!(report.contains("problems      none"), "{report}");

    let capped = texgen(&[
        "inspect",
        fixture_model().to_str().unwrap(),
        "--max-file-bytes",
        "1000000",
    ]);
    let line = assert_one_error_line(&capped);
    assert!(line.contains("1 problem(s)"), "{line}");
    let report = String::from_utf8_lossy(&capped.stdout);
    assert!(
        report.contains("over the 1000000-byte size cap"),
        "{report}"
    );
}

#[cfg(not(feature = "hf-hub"))]
#[test]
fn a_repo_id_without_the_feature_says_how_to_enable_it() {
    let o = texgen(&[
        "generate",
        "--model",
        "stabilityai/sd-turbo",
        "--prompt",
        "x",
        "--out",
        "x.png",
    ]);
    let line = assert_one_error_line(&o);
    assert!(
        line.contains("stabilityai/sd-turbo") && line.contains("--features hf-hub"),
        "{line}"
    );
}

#[test]
fn argument_errors_are_one_line_with_the_usage_exit_code() {
    for args in [
        &["generate", "--stepz", "3", "--out", "x.png"][..],
        &["generate", "--steps", "many", "--out", "x.png"][..],
        &["generate"][..],
        &["frobnicate"][..],
    ] {
        let o = texgen(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got:\n{err}");
        assert!(err.starts_with("texgen: error: "), "{err}");
    }
    let o = texgen(&["generate", "--stepz", "3", "--out", "x.png"]);
    assert!(
        stderr(&o).contains("--steps"),
        "the tip survives: {}",
        stderr(&o)
    );
    let help = texgen(&["--help"]);
    assert_eq!(help.status.code(), Some(0), "--help is not an error");
}

#[test]
fn threads_above_the_cores_are_capped_with_a_note() {
    let dir = Scratch::new("threads");
    let out = dir.0.join("x.png");
    let model = fixture_model();
    let o = texgen(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "1",
        "--threads",
        "100000",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--threads") && err.contains("100000") && err.contains("cores"),
        "{err}"
    );
    assert!(out.is_file());
}

#[test]
fn help_speaks_of_the_vae_factor_not_of_eight() {
    let o = texgen(&["generate", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(!help.contains("multiple of 8"), "{help}");
    assert!(help.contains("VAE factor"), "{help}");
}

#[test]
fn generate_with_a_taesd_decoder_and_a_wrong_decoder_folder() {
    let dir = Scratch::new("decoder");
    let out = dir.0.join("wall.png");
    let taesd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-taesd/model");
    let model = fixture_model();
    let (model, taesd, out_s) = (
        model.to_str().unwrap(),
        taesd.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let ok = texgen(&[
        "generate",
        "--model",
        model,
        "--decoder",
        taesd,
        "--prompt",
        "mossy wall",
        "--steps",
        "2",
        "--out",
        out_s,
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(image::open(&out).unwrap().width(), 64);
    // The model's own AutoencoderKL is not a TAESD decoder: one error line naming the field.
    let kl = fixture_model().join("vae");
    let bad = texgen(&[
        "generate",
        "--model",
        model,
        "--decoder",
        kl.to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        out_s,
    ]);
    let line = assert_one_error_line(&bad);
    assert!(
        line.contains("_class_name") && line.contains("AutoencoderTiny"),
        "{line}"
    );
}

#[test]
fn generate_names_the_stand_in_of_an_unknown_scheduler_class() {
    let dir = Scratch::new("stand_in");
    let model = model_with_a_bogus_scheduler(&dir.0);
    let out = dir.0.join("out.png");
    let o = texgen(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")
            && l.contains("BogusScheduler")
            && l.contains("Ddim")),
        "{err}"
    );
    // Naming a scheduler in the request: nothing to warn about.
    let o = texgen(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--scheduler",
        "euler",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("BogusScheduler"), "{}", stderr(&o));
}

/// Every file under `dir`, recursively.
#[test]
fn upscale_with_the_model_keeps_a_sprites_transparency() {
    let dir = Scratch::new("upscale_alpha");
    // A 30x30 sprite (not a multiple of 4: the upscaler rounds it down to 28): a disc on a
    // transparent background whose hidden colour is white.
    let sprite = image::RgbaImage::from_fn(30, 30, |x, y| {
        let (dx, dy) = (x as i32 - 15, y as i32 - 15);
        if dx * dx + dy * dy < 100 {
            image::Rgba([200, 50, 50, 255])
        } else {
            image::Rgba([255, 255, 255, 0])
        }
    });
    let input = dir.0.join("sprite.png");
    sprite.save(&input).unwrap();
    let upscaler =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd-upscaler/model");
    let out = dir.0.join("big.png");
    let o = texgen(&[
        "upscale",
        "--model",
        upscaler.to_str().unwrap(),
        "--in",
        input.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let big = image::open(&out).unwrap().to_rgba8();
    assert_eq!(big.dimensions(), (112, 112));
    // Corners transparent, centre opaque, as in the sprite.
    assert_eq!(big.get_pixel(0, 0).0[3], 0);
    assert_eq!(big.get_pixel(111, 111).0[3], 0);
    assert_eq!(big.get_pixel(56, 56).0[3], 255);
}

#[test]
fn pbr_refuses_a_name_that_leaves_the_out_dir() {
    let dir = Scratch::new("pbr_name");
    let input = dir.0.join("albedo.png");
    image::RgbaImage::from_pixel(8, 8, image::Rgba([90, 140, 30, 255]))
        .save(&input)
        .unwrap();
    let out_dir = dir.0.join("a").join("b");
    for name in ["../../x", "/tmp/x", "sub/x", "..", "", "c:x", "sub\\x"] {
        let o = texgen(&[
            "pbr",
            "--in",
            input.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--name",
            name,
        ]);
        let line = assert_one_error_line(&o);
        assert!(
            line.contains("--name") && line.contains(&format!("{name:?}")),
            "{name}: {line}"
        );
    }
    // Nothing was written anywhere under the scratch folder but the input.
    assert_eq!(walk(&dir.0), vec![input.clone()]);
    // A plain name still works.
    let o = texgen(&[
        "pbr",
        "--in",
        input.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--name",
        "moss.v2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out_dir.join("moss.v2_normal.png").is_file());
}

#[test]
fn generate_pbr_refuses_an_out_name_before_generating() {
    let dir = Scratch::new("generate_pbr_name");
    let model = fixture_model();
    for (out, reason) in [("c:x.png", "name a drive"), ("..png", "must not be `.`")] {
        let out = dir.0.join(out);
        let o = texgen(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "moss",
            "--steps",
            "1",
            "--pbr",
            "--out",
            out.to_str().unwrap(),
        ]);
        let line = assert_one_error_line(&o);
        assert!(line.contains("--pbr") && line.contains(reason), "{line}");
        // Refused before the model ran: no step was printed and nothing was written.
        assert!(!stderr(&o).contains("step 1"), "{}", stderr(&o));
        assert!(walk(&dir.0).is_empty(), "{:?}", walk(&dir.0));
    }
}

#[test]
fn bake_refuses_item_names_that_leave_the_out_dir() {
    // Bake's output names come from the manifest; the planner refuses these before any model
    // work, so the PBR maps (NAME_normal.png, ...) cannot escape either.
    let dir = Scratch::new("bake_name");
    let manifest = dir.0.join("m.ron");
    std::fs::write(
        &manifest,
        format!(
            "(model: {:?}, items: {{ \"../x\": (prompt: \"p\", pbr: true, width: 16, height: 16, num_inference_steps: 1) }})",
            fixture_model().display().to_string()
        ),
    )
    .unwrap();
    let out = dir.0.join("out");
    let o = texgen(&[
        "bake",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_error_line(&o);
    assert!(
        stderr(&o).contains("invalid item name \"../x\""),
        "{}",
        stderr(&o)
    );
    assert_eq!(walk(&dir.0), vec![manifest.clone()]);
}

#[test]
fn bake_names_the_stand_in_of_an_unknown_scheduler_class_once() {
    let dir = Scratch::new("bake_stand_in");
    let model = model_with_a_bogus_scheduler(&dir.0);
    let manifest = dir.0.join("m.ron");
    let write = |items: &str| {
        std::fs::write(
            &manifest,
            format!(
                "(model: {:?}, items: {{ {items} }})",
                model.display().to_string()
            ),
        )
        .unwrap()
    };
    let item = |name: &str, extra: &str| {
        format!(
            "\"{name}\": (prompt: \"{name}\", width: 16, height: 16, num_inference_steps: 1{extra}),"
        )
    };
    write(&format!("{}{}", item("wall", ""), item("floor", "")));
    let out = dir.0.join("out");
    let args = [
        "bake",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = texgen(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning: ") && l.contains("BogusScheduler"))
        .collect();
    assert_eq!(warnings.len(), 1, "once per model, not per item: {err}");
    assert!(warnings[0].contains("Ddim"), "names the stand-in: {err}");
    // Items that name their scheduler: nothing to warn about.
    write(&format!(
        "{}{}",
        item("wall", ", scheduler: euler"),
        item("floor", ", scheduler: euler")
    ));
    let o = texgen(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("BogusScheduler"), "{}", stderr(&o));
}

#[test]
fn generate_with_an_upscaler_folder_as_the_model_says_what_it_is_and_how_to_use_it() {
    let dir = Scratch::new("upscaler_as_model");
    let upscaler =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd-upscaler/model");
    let out = dir.0.join("out.png");
    let o = texgen(&[
        "generate",
        "--model",
        upscaler.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let line = assert_one_error_line(&o);
    assert!(
        line.contains("StableDiffusionUpscalePipeline") && line.contains("x4 upscaler"),
        "names what the folder is: {line}"
    );
    assert!(
        line.contains("--upscaler")
            && line.contains("LoadOptions::upscaler")
            && line.contains("texgen upscale"),
        "names what to use instead: {line}"
    );
    assert!(!line.contains("not supported"), "{line}");
    assert!(!out.exists());
    // The fixture folder above it (no model_index.json, but a references.safetensors): not "a
    // single-file checkpoint to convert with StableDiffusionPipeline", but the pipeline inside.
    let o = texgen(&[
        "generate",
        "--model",
        upscaler.parent().unwrap().to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        out.to_str().unwrap(),
    ]);
    let line = assert_one_error_line(&o);
    assert!(
        line.contains("model has one")
            && line.contains("StableDiffusionUpscalePipeline")
            && line.contains("--upscaler"),
        "{line}"
    );
    assert!(!line.contains("from_single_file"), "{line}");
}
