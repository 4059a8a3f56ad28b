use super::*;

fn files(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The file list of stabilityai/sd-turbo (as of 2024), abridged.
fn sd_turbo() -> Vec<String> {
    files(&[
        ".gitattributes",
        "README.md",
        "model_index.json",
        "sd_turbo.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bin",
    ])
}

#[test]
fn repo_ids_and_paths() {
    for id in [
        "stabilityai/sd-turbo",
        "runwayml/stable-diffusion-v1-5",
        "a/b@fp16",
    ] {
        assert!(looks_like_repo_id(id), "{id}");
    }
    for path in [
        "./models/x",
        "/abs/path",
        "models/x/y",
        "model",
        "../x",
        "a/.hidden",
        "a/b c",
        "C:\\models\\x",
        "a/manifest.json",
    ] {
        assert!(!looks_like_repo_id(path), "{path}");
    }
}

#[test]
fn plan_selects_only_what_a_folder_needs() {
    let plan = plan_fetch("stabilityai/sd-turbo", &sd_turbo(), false).unwrap();
    assert_eq!(
        plan.files,
        files(&[
            "model_index.json",
            "text_encoder/config.json",
            "unet/config.json",
            "vae/config.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "scheduler/scheduler_config.json",
            "text_encoder/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ])
    );
    assert!(plan.sharded_indexes.is_empty());
    let fp16 = plan_fetch("stabilityai/sd-turbo", &sd_turbo(), true).unwrap();
    assert!(
        fp16.files
            .contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string())
    );
    assert!(
        !fp16
            .files
            .iter()
            .any(|f| f.ends_with(".bin") || f == "sd_turbo.safetensors")
    );
}

#[test]
fn plan_refuses_pickles_and_single_files_and_fetches_sdxl() {
    let mut pickled = sd_turbo();
    pickled.retain(|f| !f.starts_with("vae/diffusion_pytorch_model") || f.ends_with(".bin"));
    let e = plan_fetch("x/y", &pickled, false).unwrap_err().to_string();
    assert!(
        e.contains("vae/diffusion_pytorch_model.bin") && e.contains("pickled"),
        "{e}"
    );
    // SDXL: text_encoder_2 and tokenizer_2 are needed and fetched.
    let mut sdxl = sd_turbo();
    sdxl.push("text_encoder_2/config.json".into());
    let e = plan_fetch("x/y", &sdxl, false).unwrap_err().to_string();
    assert!(e.contains("text_encoder_2"), "{e}");
    sdxl.push("text_encoder_2/model.safetensors".into());
    let e = plan_fetch("x/y", &sdxl, false).unwrap_err().to_string();
    assert!(e.contains("tokenizer_2/tokenizer.json"), "{e}");
    sdxl.extend(files(&[
        "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json",
    ]));
    let plan = plan_fetch("x/y", &sdxl, false).unwrap();
    for f in [
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json",
    ] {
        assert!(plan.files.iter().any(|x| x == f), "{f} in {:?}", plan.files);
    }
    let single = files(&["README.md", "v1-5-pruned.ckpt"]);
    let e = plan_fetch("x/y", &single, false).unwrap_err().to_string();
    assert!(
        e.contains("v1-5-pruned.ckpt") && e.contains("model_index.json"),
        "{e}"
    );
}

#[test]
fn sharded_indexes_expand_to_their_shards() {
    let mut list = sd_turbo();
    list.retain(|f| !f.starts_with("unet/diffusion_pytorch_model"));
    list.push("unet/diffusion_pytorch_model.safetensors.index.json".into());
    let plan = plan_fetch("x/y", &list, false).unwrap();
    assert_eq!(
        plan.sharded_indexes,
        ["unet/diffusion_pytorch_model.safetensors.index.json"]
    );
    let index = r#"{"weight_map": {"a": "diffusion_pytorch_model-00002-of-00002.safetensors",
        "b": "diffusion_pytorch_model-00001-of-00002.safetensors",
        "c": "diffusion_pytorch_model-00001-of-00002.safetensors"}}"#;
    assert_eq!(
        shards_in_index("x/y", &plan.sharded_indexes[0], index).unwrap(),
        [
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00002-of-00002.safetensors"
        ]
    );
    let evil = r#"{"weight_map": {"a": "../../etc/passwd"}}"#;
    assert!(shards_in_index("x/y", "unet/i.json", evil).is_err());
}

#[test]
fn root_of_strips_the_repo_path() {
    assert_eq!(
        root_of(Path::new("/c/snap/unet/config.json"), "unet/config.json"),
        Some(PathBuf::from("/c/snap"))
    );
    assert_eq!(
        root_of(Path::new("/c/other.json"), "unet/config.json"),
        None
    );
}

/// The HF implementation, offline: a snapshot already in the cache is listed and fetched
/// from there (the endpoint is a closed local port, so nothing can be downloaded).
#[cfg(feature = "hf-hub")]
#[test]
fn hf_repo_works_offline_from_its_cache() {
    let cache = std::env::temp_dir().join(format!("bd_hub_cache_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let repo_dir = cache.join("models--tests--tiny-sd");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), "0123abcd").unwrap();
    let snapshot = repo_dir.join("snapshots/0123abcd");
    crate::loading::embedded::write_embedded_model(&snapshot).unwrap();
    let options = HubOptions {
        cache_dir: Some(cache.clone()),
        endpoint: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    };
    let repo = HfHubRepo::new("tests/tiny-sd", &options).unwrap();
    let local = download(&repo, false, &mut |_| {}).unwrap();
    assert_eq!(local, snapshot);
    assert!(crate::loading::folder::ModelFolder::open(&local, &Default::default()).is_ok());
    // Not cached: the fetch error names the repo.
    let missing = HfHubRepo::new("tests/absent", &options).unwrap();
    let e = download(&missing, false, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("tests/absent: cannot fetch"), "{e}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[cfg(not(feature = "hf-hub"))]
#[test]
fn repo_ids_need_the_feature() {
    let e = resolve_model(
        "stabilityai/sd-turbo",
        Path::new("."),
        &HubOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, HubError::FeatureDisabled(_)));
    assert!(e.to_string().contains("--features hf-hub"), "{e}");
    // A path that is not a repo id stays a path (reported missing by the folder checks).
    assert_eq!(
        resolve_model("no/such/dir", Path::new("/base"), &HubOptions::default()).unwrap(),
        PathBuf::from("/base/no/such/dir")
    );
}
