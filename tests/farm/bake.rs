//! `texgen bake --farm` on the library ([`bake_on_farm`]): a manifest's items run by
//! `farm_fast_worker` processes and written as a local bake writes them; a failing item is
//! reported with the worker's reason and the rest go on; no worker at all ends in the idle
//! timeout, not a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bevy_diffusion::tools::bake::farm::{FarmBakeOptions, bake_on_farm};
use bevy_diffusion::tools::bake::{BakeEvent, BakeManifest, BakeOptions, ItemOutcome, Sidecar};

use super::*;

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-sd/model")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bd-farm-bake-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const MANIFEST: &str = r#"(
    items: {
        "wall": (prompt: "mossy wall", seed: 3, width: 16, height: 16, num_inference_steps: 3),
        "boom": (prompt: "fail: the generator refuses", width: 16, height: 16, num_inference_steps: 2),
        "coin": (prompt: "gold coin", seed: 9, width: 16, height: 16, num_inference_steps: 2),
        "same": (prompt: "gold coin", seed: 9, width: 16, height: 16, num_inference_steps: 2),
    },
)"#;

fn farm_options(server: &NatsServer, idle: Duration) -> FarmBakeOptions {
    let mut farm = FarmBakeOptions::new(server.url());
    farm.settings.limits = limits(5000);
    farm.idle_timeout = idle;
    farm
}

#[test]
fn a_farm_bake_writes_every_item_and_reports_the_failing_one() {
    let server = NatsServer::start();
    let _w1 = worker(&server, "w1", 10, 5000);
    let _w2 = worker(&server, "w2", 10, 5000);
    let manifest = BakeManifest::parse(MANIFEST, Path::new("m.ron")).unwrap();
    let dir = scratch("ok");
    let options = BakeOptions::new(dir.join("out"), model());
    let farm = farm_options(&server, Duration::from_secs(60));
    let mut steps = 0;
    let mut finished = Vec::new();
    let report = bake_on_farm(&manifest, &options, &farm, &mut |e| match e {
        BakeEvent::Step { .. } => steps += 1,
        BakeEvent::ItemFinished { name, .. } => finished.push(name.to_string()),
        _ => {}
    })
    .unwrap();
    let names: Vec<&str> = report.items.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["wall", "boom", "coin", "same"], "manifest order");
    finished.sort();
    assert_eq!(
        finished,
        ["boom", "coin", "same", "wall"],
        "one ItemFinished each"
    );
    assert!(steps >= 3, "progress reached the caller: {steps} steps");
    match &report.items[1].1 {
        ItemOutcome::Failed(reason) => assert!(reason.contains("always fails"), "{reason}"),
        other => panic!("boom: {other:?}"),
    }
    assert_eq!(report.summary(), "baked 3, skipped 0, failed 1");
    for name in ["wall", "coin", "same"] {
        let png = dir.join("out").join(format!("{name}.png"));
        let img = image::open(&png).unwrap().to_rgba8();
        let sidecar: Sidecar = serde_json::from_str(
            &std::fs::read_to_string(dir.join("out").join(format!("{name}.texgen.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(sidecar.model_identity, report.model_identity);
        assert_eq!((sidecar.width, sidecar.height), img.dimensions());
        // The fast worker's red channel is the seed's low byte.
        assert_eq!(
            img.get_pixel(0, 0).0[0] as u64,
            sidecar.seed & 0xff,
            "{name}"
        );
    }
    assert!(!dir.join("out").join("boom.png").exists());

    // A rerun skips what is there and tries the failing item again.
    let again = bake_on_farm(&manifest, &options, &farm, &mut |_| {}).unwrap();
    assert_eq!(again.summary(), "baked 0, skipped 3, failed 1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_farm_bake_without_workers_ends_at_the_idle_timeout() {
    let server = NatsServer::start();
    let manifest = BakeManifest::parse(MANIFEST, Path::new("m.ron")).unwrap();
    let dir = scratch("idle");
    let options = BakeOptions::new(dir.join("out"), model());
    let farm = farm_options(&server, Duration::from_secs(2));
    let report = bake_on_farm(&manifest, &options, &farm, &mut |_| {}).unwrap();
    assert_eq!(report.items.len(), 4);
    for (name, outcome) in &report.items {
        match outcome {
            ItemOutcome::Failed(r) => {
                assert!(r.contains("reported nothing for 2 s"), "{name}: {r}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
