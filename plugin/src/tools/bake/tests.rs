use std::path::Path;

use super::*;
use crate::Tiling;
use crate::request::AssetKind;
use crate::request::ron::{parse_request_ron, request_to_ron};
use crate::request::{GenerationRequest, InitImage};
use crate::runtime::atomic_file::{remove_stale_temp_files, write_atomic};
use crate::runtime::cache::CacheKey;
use crate::schedulers::SchedulerKind;

fn p() -> &'static Path {
    Path::new("test.ron")
}

#[test]
fn request_ron_defaults_aliases_and_implicit_some() {
    let r = parse_request_ron(
        "(prompt: \"mossy wall\", seed: 3, tiling: XY, kind: sprite, scheduler: r#euler-a, \
         pixel_art: (cell: 2, colors: 16))",
        p(),
    )
    .unwrap();
    assert_eq!(r.prompt, "mossy wall");
    assert_eq!(r.seed, 3);
    assert_eq!(r.tiling, Tiling::XY);
    assert_eq!(r.kind, AssetKind::Sprite);
    assert_eq!(r.scheduler, Some(SchedulerKind::EulerAncestral));
    assert_eq!(r.steps(), 20, "defaults fill the rest");
    let r2 = parse_request_ron(
        "(tiling: xy, kind: Sprite, scheduler: Some(EulerAncestral))",
        p(),
    )
    .unwrap();
    assert_eq!(
        (r2.tiling, r2.kind, r2.scheduler),
        (
            Tiling::XY,
            AssetKind::Sprite,
            Some(SchedulerKind::EulerAncestral)
        )
    );
    assert_eq!(
        parse_request_ron("()", p()).unwrap(),
        GenerationRequest::default()
    );
}

#[test]
fn request_ron_round_trips() {
    let r = GenerationRequest {
        prompt: "a \"quoted\" prompt".into(),
        seed: 7,
        scheduler: Some(SchedulerKind::DpmSolverMultistepKarras),
        tiling: Tiling::X,
        init_image: Some(InitImage::Path("rock.png".into())),
        pixel_art: Some(crate::request::PixelArt { cell: 3, colors: 8 }),
        player: Some("ann".into()),
        ..Default::default()
    };
    let text = request_to_ron(&r);
    assert_eq!(parse_request_ron(&text, p()).unwrap(), r, "{text}");
}

#[test]
fn request_ron_errors_name_line_and_field() {
    let e = parse_request_ron("(\n  prompt: \"x\",\n  width: \"big\",\n)", p()).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert_eq!(e.field.as_deref(), Some("width"), "{e}");
    assert!(e.to_string().starts_with("test.ron:3:"), "{e}");
    let e = parse_request_ron("(\n  prompt: \"x\",\n  widht: 64,\n)", p()).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("widht"), "{e}");
    let e = parse_request_ron("(prompt: \"x\") trailing", p()).unwrap_err();
    assert_eq!(e.line, 1, "{e}");
}

#[test]
fn manifest_keeps_order_and_names_the_item_field() {
    let m = BakeManifest::parse(
        "(items: { \"b\": (seed: 1), \"a\": (), \"c\": (prompt: \"z\") })",
        p(),
    )
    .unwrap();
    let names: Vec<_> = m.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
    assert_eq!(m.model, None);
    let m = BakeManifest::parse("(model: \"models/x\", items: {})", p()).unwrap();
    assert_eq!(m.model.as_deref(), Some("models/x"));

    let e = BakeManifest::parse(
        "(\n  items: {\n    \"wall\": (seed: 1),\n    \"floor\": (tiling: diagonal),\n  },\n)",
        p(),
    )
    .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert_eq!(e.field.as_deref(), Some("items.floor.tiling"), "{e}");
    let e = BakeManifest::parse("(items: { \"a\": (), \"a\": () })", p()).unwrap_err();
    assert!(e.message.contains("`a` appears twice"), "{e}");
    let e = BakeManifest::parse("(itemz: {})", p()).unwrap_err();
    assert!(e.message.contains("itemz"), "{e}");
}

#[test]
fn item_names_are_portable_file_stems() {
    for ok in ["wall", "wall_02", "Wall-mossy.v2", "a"] {
        assert!(check_item_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "", "../up", "a/b", "a\\b", ".hidden", "-x", "dot.", "con", "NUL.txt", "com1", "sp ace",
        "grün", "a:b",
    ] {
        assert!(check_item_name(bad).is_err(), "{bad:?}");
    }
    assert!(check_item_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    assert!(
        check_item_name("combat").is_ok(),
        "only com1..com9 are reserved"
    );
}

#[test]
fn content_hash_is_the_cache_key_unless_an_init_image_file_is_named() {
    let r = GenerationRequest::texture("wall");
    assert_eq!(
        content_hash("m", &r, Path::new(".")).unwrap(),
        CacheKey::new("m", &r).hex()
    );
    let dir = std::env::temp_dir().join(format!("bd_bake_hash_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("init.png"), b"one").unwrap();
    let img2img = GenerationRequest {
        init_image: Some(InitImage::Path("init.png".into())),
        ..r
    };
    let h1 = content_hash("m", &img2img, &dir).unwrap();
    std::fs::write(dir.join("init.png"), b"two").unwrap();
    let h2 = content_hash("m", &img2img, &dir).unwrap();
    assert_ne!(h1, h2, "editing the init image changes the hash");
    assert!(content_hash("m", &img2img, Path::new("/nonexistent")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn atomic_writes_leave_no_temporary_files() {
    let dir = std::env::temp_dir().join(format!("bd_bake_atomic_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("x.png");
    write_atomic(&file, b"first").unwrap();
    // A stale temporary file of an interrupted write by another process.
    std::fs::write(dir.join(".x.png.tmp-99999"), b"half").unwrap();
    remove_stale_temp_files(&file);
    write_atomic(&file, b"second").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"second");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["x.png"]);
    let _ = std::fs::remove_dir_all(&dir);
}
