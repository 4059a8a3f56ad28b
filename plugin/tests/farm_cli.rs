//! The `texgen` binary on a generation farm (feature `farm`): `texgen serve --nats` as a worker
//! process on the tiny-sd fixture model, `texgen generate --farm` and `texgen bake --farm`
//! against a real `nats-server -js` on a random port, compared with the same commands run
//! locally; and the one-line error when the broker is unreachable.
//!
//! Without nats-server installed these tests fail with the install line.

#[path = "../../tests/support/farm.rs"]
#[allow(dead_code)]
mod nats;
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nats::NatsServer;
use support::{Scratch, error_line, fixture_model, model_with_a_bogus_scheduler, stderr, texgen};

/// `texgen serve --nats url --model tiny-sd`, SIGKILLed on drop.
struct Serve(Child);
impl Serve {
    fn start(url: &str, name: &str) -> Self {
        let model = fixture_model();
        let child = Command::new(env!("CARGO_BIN_EXE_texgen"))
            .args(["serve", "--nats", url, "--name", name, "--model"])
            .arg(&model)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start texgen serve");
        Self(child)
    }
}
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    format!("nats://127.0.0.1:{port}")
}

#[test]
fn an_unreachable_broker_is_one_clear_error_for_every_command() {
    let dir = Scratch::new("dead");
    let url = dead_url();
    let manifest = dir.path("m.ron");
    std::fs::write(
        &manifest,
        format!(
            "(model: {:?}, items: {{ \"a\": (prompt: \"x\", width: 16, height: 16) }})",
            fixture_model().display().to_string()
        ),
    )
    .unwrap();
    let out = dir.path("x.png");
    let runs = [
        texgen(&["generate", "--farm", &url, "--prompt", "x", "--out", &out]),
        texgen(&[
            "serve",
            "--nats",
            &url,
            "--model",
            fixture_model().to_str().unwrap(),
        ]),
        texgen(&["bake", &manifest, "--out", &dir.path("out"), "--farm", &url]),
    ];
    for run in &runs {
        let line = error_line(run);
        assert!(
            line.contains(&format!("cannot reach the NATS server at {url} within 5 s")),
            "{line}"
        );
    }
    assert!(!Path::new(&out).exists());
}

#[test]
fn model_flags_are_refused_with_generate_farm() {
    let dir = Scratch::new("flags");
    let model = fixture_model();
    let out = texgen(&[
        "generate",
        "--farm",
        &dead_url(),
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        &dir.path("x.png"),
    ]);
    let line = error_line(&out);
    assert!(
        line.contains("--model cannot be combined with --farm"),
        "{line}"
    );
}

#[test]
fn generate_and_bake_on_the_farm_write_what_a_local_run_writes() {
    let server = NatsServer::start();
    let url = server.url();
    let _worker = Serve::start(&url, "w1");
    let dir = Scratch::new("farm");
    let model = fixture_model();
    let model = model.to_str().unwrap();
    let common = [
        "--prompt",
        "mossy stone",
        "--seed",
        "5",
        "--steps",
        "2",
        "--width",
        "16",
        "--height",
        "16",
    ];

    // One request: on the farm, then locally; the same pixels.
    let farm_png = dir.path("farm.png");
    let mut args = vec![
        "generate",
        "--farm",
        url.as_str(),
        "--out",
        farm_png.as_str(),
    ];
    args.extend(common);
    let farm = texgen(&args);
    assert!(farm.status.success(), "{}", stderr(&farm));
    assert!(stderr(&farm).contains("submitted to"), "{}", stderr(&farm));
    let local_png = dir.path("local.png");
    let mut args = vec!["generate", "--model", model, "--out", local_png.as_str()];
    args.extend(common);
    let local = texgen(&args);
    assert!(local.status.success(), "{}", stderr(&local));
    let (a, b) = (
        image::open(&farm_png).unwrap().to_rgba8(),
        image::open(&local_png).unwrap().to_rgba8(),
    );
    assert_eq!(a.dimensions(), (16, 16));
    assert_eq!(a.dimensions(), b.dimensions());
    let worst = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(worst <= 1, "farm vs local: max difference {worst}/255");

    // A manifest: on the farm into one folder, locally into another.
    let manifest = dir.path("textures.ron");
    std::fs::write(
        &manifest,
        format!(
            r#"(
    model: {model:?},
    items: {{
        "wall": (prompt: "mossy stone wall", seed: 3, tiling: xy, width: 16, height: 16, num_inference_steps: 2),
        "bad":  (prompt: "oops", width: 100, num_inference_steps: 2),
        "coin": (prompt: "gold coin", kind: sprite, width: 16, height: 16, num_inference_steps: 1),
    }},
)"#
        ),
    )
    .unwrap();
    let farm_out = dir.path("farm_out");
    let baked = texgen(&["bake", &manifest, "--out", &farm_out, "--farm", &url]);
    let line = error_line(&baked);
    assert!(line.contains("1 of 3 items failed: bad"), "{line}");
    let err = stderr(&baked);
    assert!(err.contains("baked 2, skipped 0, failed 1"), "{err}");
    assert!(err.contains("done    wall"), "{err}");
    assert!(err.contains("FAILED  bad: invalid request"), "{err}");
    let local_out = dir.path("local_out");
    let baked_here = texgen(&["bake", &manifest, "--out", &local_out]);
    assert!(
        stderr(&baked_here).contains("baked 2"),
        "{}",
        stderr(&baked_here)
    );
    for name in ["wall", "coin"] {
        let (f, l) = (
            image::open(Path::new(&farm_out).join(format!("{name}.png"))).unwrap(),
            image::open(Path::new(&local_out).join(format!("{name}.png"))).unwrap(),
        );
        let worst = (f.to_rgba8().as_raw().iter())
            .zip(l.to_rgba8().as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{name}: farm vs local bake differ by {worst}/255"
        );
    }
    // The farm's sidecars are a local bake's: a local rerun on the farm's folder skips both.
    let again = texgen(&["bake", &manifest, "--out", &farm_out]);
    let err = stderr(&again);
    assert!(err.contains("baked 0, skipped 2, failed 1"), "{err}");
    assert!(!err.contains("loaded "), "nothing to load: {err}");
}

#[test]
fn serve_names_the_scheduler_stand_in_of_its_model() {
    let server = NatsServer::start();
    let dir = Scratch::new("serve_stand_in");
    let model = model_with_a_bogus_scheduler(&dir.0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_texgen"))
        .args(["serve", "--nats", &server.url(), "--model"])
        .arg(&model)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start texgen serve");
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let hit = line.starts_with("warning: ") && line.contains("BogusScheduler");
                seen.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no stand-in warning: {seen:?}");
    let last = seen.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("Ddim") && last.contains("jobs that name no scheduler"),
        "{seen:?}"
    );
}
