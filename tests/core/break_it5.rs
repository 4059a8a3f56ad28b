//! Break-it run 5 (issues 11 and 15), each case reproduced: the worker's result cache must not
//! serve a stale image when an init image or inpainting mask named by path changes on disk, an
//! absurd `cache_memory_entries` must not allocate up front, and an in-memory mask is checked at
//! submit like an init image.

use std::time::Duration;

use bevy_diffusion::pipeline::GenerationHooks;
use bevy_diffusion::request::InitImage;
use bevy_diffusion::runtime::worker::{GenerationWorker, WorkerConfig, WorkerEvent};
use bevy_diffusion::{GenerationRequest, Generator, RequestId};
use image::{Rgba, RgbaImage};

use crate::loading::scratch;

/// A fake model whose 1x1 output is the first pixel of the init image plus, in blue, the first
/// grey level of the mask: what a real img2img/inpaint would make of those files.
struct Echo;

impl Generator for Echo {
    fn identity(&self) -> String {
        "echo".into()
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        _hooks: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<RgbaImage> {
        let first = |i: &Option<InitImage>| match i {
            Some(InitImage::Path(p)) => image::open(p).unwrap().to_rgba8().get_pixel(0, 0).0,
            _ => [0; 4],
        };
        let (init, mask) = (first(&request.init_image), first(&request.mask));
        Ok(RgbaImage::from_pixel(
            1,
            1,
            Rgba([init[0], init[1], mask[0], 255]),
        ))
    }
}

fn finished(worker: &GenerationWorker, id: RequestId) -> (RgbaImage, bool) {
    loop {
        match worker
            .events()
            .recv_timeout(Duration::from_secs(30))
            .expect("worker event")
        {
            WorkerEvent::Finished {
                id: got,
                image,
                cached,
                ..
            } if got == id => return (image, cached),
            WorkerEvent::Failed { id: got, error } if got == id => panic!("failed: {error}"),
            _ => {}
        }
    }
}

#[test]
fn an_edited_init_image_or_mask_file_is_not_served_from_the_cache() {
    let dir = scratch("break_it5_cache");
    let (init, mask) = (dir.path.join("init.png"), dir.path.join("mask.png"));
    let save = |path: &std::path::Path, v: [u8; 4]| {
        RgbaImage::from_pixel(4, 4, Rgba(v)).save(path).unwrap();
    };
    save(&init, [10, 20, 0, 255]);
    save(&mask, [255, 255, 255, 255]);
    let worker = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Echo));
    let request = GenerationRequest {
        prompt: "patch".into(),
        init_image: Some(InitImage::Path(init.clone())),
        mask: Some(InitImage::Path(mask.clone())),
        ..Default::default()
    };
    let run = |r: &GenerationRequest| {
        let id = worker.submit(r.clone()).unwrap();
        finished(&worker, id)
    };
    let (first, cached) = run(&request);
    assert_eq!(
        (first.get_pixel(0, 0).0, cached),
        ([10, 20, 255, 255], false)
    );
    // Unchanged files: a hit.
    assert_eq!(run(&request), (first.clone(), true));
    // The init image edited in place: regenerated, not the stale pixels.
    save(&init, [30, 40, 0, 255]);
    let (second, cached) = run(&request);
    assert_eq!(
        (second.get_pixel(0, 0).0, cached),
        ([30, 40, 255, 255], false)
    );
    // The mask edited in place: the same.
    save(&mask, [0, 0, 0, 255]);
    let (third, cached) = run(&request);
    assert_eq!((third.get_pixel(0, 0).0, cached), ([30, 40, 0, 255], false));
}

#[test]
fn an_absurd_memory_cache_size_allocates_nothing_up_front() {
    // `cache_memory_entries` is a count from the game's settings: usize::MAX used to make
    // `lru` preallocate a hash table of that capacity (a panic; 1 << 40 an abort).
    use bevy_diffusion::runtime::cache::{CacheKey, ImageCache};
    for entries in [usize::MAX, 1 << 40] {
        let mut cache = ImageCache::new(entries, None);
        let key = CacheKey::new("m", &GenerationRequest::default());
        let image = RgbaImage::from_pixel(2, 2, Rgba([1, 2, 3, 4]));
        cache.put(key, &image);
        assert_eq!(cache.get(&key), Some(image));
    }
    let config = WorkerConfig {
        cache_memory_entries: usize::MAX,
        ..WorkerConfig::default()
    };
    let worker = GenerationWorker::spawn(config, || Ok(Echo));
    let id = worker.submit(GenerationRequest::default()).unwrap();
    assert_eq!(finished(&worker, id).1, false);
    let id = worker.submit(GenerationRequest::default()).unwrap();
    assert_eq!(finished(&worker, id).1, true, "the second is a hit");
}

#[test]
fn a_small_memory_cache_evicts_the_least_recently_used() {
    use bevy_diffusion::runtime::cache::{CacheKey, ImageCache};
    let mut cache = ImageCache::new(2, None);
    let key = |seed| {
        CacheKey::new(
            "m",
            &GenerationRequest {
                seed,
                ..Default::default()
            },
        )
    };
    let image = |v| RgbaImage::from_pixel(1, 1, Rgba([v, 0, 0, 255]));
    cache.put(key(1), &image(1));
    cache.put(key(2), &image(2));
    assert!(cache.get(&key(1)).is_some()); // 1 is now the most recent
    cache.put(key(3), &image(3));
    assert_eq!(cache.get(&key(2)), None, "2 was the least recently used");
    assert_eq!(cache.get(&key(1)), Some(image(1)));
    assert_eq!(cache.get(&key(3)), Some(image(3)));
}

#[test]
fn an_in_memory_mask_of_the_wrong_length_is_refused_at_submit_like_an_init_image() {
    let worker = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Echo));
    let good = InitImage::Rgba {
        width: 2,
        height: 2,
        pixels: vec![0; 16],
    };
    for (bad, value) in [
        (
            InitImage::Rgba {
                width: 2,
                height: 2,
                pixels: vec![0; 15],
            },
            "2x2 with 15 bytes",
        ),
        (
            InitImage::Rgba {
                width: u32::MAX,
                height: u32::MAX,
                pixels: Vec::new(),
            },
            "4294967295x4294967295",
        ),
    ] {
        let request = GenerationRequest {
            init_image: Some(good.clone()),
            mask: Some(bad),
            ..Default::default()
        };
        match worker.submit(request) {
            Err(bevy_diffusion::SubmitError::InvalidRequest {
                field, value: v, ..
            }) => assert_eq!((field, v.as_str()), ("mask", value)),
            other => panic!("expected an InvalidRequest naming mask, got {other:?}"),
        }
    }
}
