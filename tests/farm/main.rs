//! The generation farm against a real `nats-server -js` on 127.0.0.1 (one per test, random
//! port, fresh store): workers are `farm_fast_worker` child processes (the real serve loop on a
//! fast stand-in generator) that the tests SIGKILL; the submitter is [`FarmClient`]; a
//! [`FarmProbe`] watches the wire, the stream and the object store.
//!
//! Without nats-server installed every test here fails with the install line.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bevy_diffusion::farm::schema::FarmEvent;
use bevy_diffusion::farm::{FarmClient, FarmLimits, FarmProbe, FarmSettings, QueueState};
use bevy_diffusion::runtime::worker::WorkerEvent;
use bevy_diffusion::{GenerationRequest, RequestId, SubmitError};
use bevy_diffusion_tests::farm::{NatsServer, WorkerProcess};

mod bake;
#[allow(dead_code)]
#[path = "farm_load.rs"]
mod farm_load;

const WORKER: &str = env!("CARGO_BIN_EXE_farm_fast_worker");

fn limits(ack_wait_ms: u64) -> FarmLimits {
    FarmLimits {
        ack_wait: Duration::from_millis(ack_wait_ms),
        max_deliveries: 3,
        ..FarmLimits::default()
    }
}

fn connect(server: &NatsServer, limits: &FarmLimits) -> (FarmClient, FarmProbe) {
    let mut settings = FarmSettings::new(server.url());
    settings.limits = limits.clone();
    let client = FarmClient::connect(settings).expect("client connects");
    let probe = FarmProbe::connect(&server.url(), limits.clone()).expect("probe connects");
    (client, probe)
}

fn worker(server: &NatsServer, name: &str, step_ms: u64, ack_wait_ms: u64) -> WorkerProcess {
    let (step, ack) = (step_ms.to_string(), ack_wait_ms.to_string());
    let flags = [
        "--step-ms",
        &step,
        "--ack-wait-ms",
        &ack,
        "--max-deliveries",
        "3",
    ];
    WorkerProcess::spawn(WORKER, &server.url(), name, &flags)
}

fn request(prompt: &str, player: Option<&str>, steps: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        seed: prompt.len() as u64 * 7 + 3,
        width: 64,
        height: 64,
        num_inference_steps: Some(steps),
        player: player.map(str::to_string),
        ..Default::default()
    }
}

fn event_id(e: &WorkerEvent) -> Option<RequestId> {
    match e {
        WorkerEvent::Started { id }
        | WorkerEvent::Progress { id, .. }
        | WorkerEvent::Finished { id, .. }
        | WorkerEvent::Failed { id, .. }
        | WorkerEvent::Cancelled { id } => Some(*id),
        _ => None,
    }
}

fn is_terminal(e: &WorkerEvent) -> bool {
    matches!(
        e,
        WorkerEvent::Finished { .. } | WorkerEvent::Failed { .. } | WorkerEvent::Cancelled { .. }
    )
}

/// Every event of `ids` until each has a terminal one, then one more second (so a second
/// terminal event would show). Panics naming the ids still open after `limit`.
fn collect(
    client: &FarmClient,
    ids: &[RequestId],
    limit: Duration,
) -> HashMap<RequestId, Vec<WorkerEvent>> {
    let mut events: HashMap<RequestId, Vec<WorkerEvent>> = HashMap::new();
    let deadline = Instant::now() + limit;
    let open = |events: &HashMap<RequestId, Vec<WorkerEvent>>| {
        ids.iter()
            .filter(|id| !events.get(id).is_some_and(|v| v.iter().any(is_terminal)))
            .copied()
            .collect::<Vec<_>>()
    };
    while !open(&events).is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "requests {:?} never ended", open(&events));
        if let Ok(e) = client
            .events()
            .recv_timeout(left.min(Duration::from_millis(200)))
            && let Some(id) = event_id(&e)
        {
            events.entry(id).or_default().push(e);
        }
    }
    while let Ok(e) = client.events().recv_timeout(Duration::from_secs(1)) {
        if let Some(id) = event_id(&e) {
            events.entry(id).or_default().push(e);
        }
    }
    events
}

fn terminals(events: &HashMap<RequestId, Vec<WorkerEvent>>, id: RequestId) -> Vec<&WorkerEvent> {
    events[&id].iter().filter(|e| is_terminal(e)).collect()
}

/// Waits (at most 10 s) for the stream to hold nothing and the consumers to have nothing
/// pending or unacknowledged, and returns the last state seen.
fn settled_queue(probe: &FarmProbe) -> QueueState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = probe.queue().expect("queue state");
        if q == QueueState::default() || Instant::now() > deadline {
            return q;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything the wire carried so far.
fn drain(feed: &crossbeam_channel::Receiver<(String, FarmEvent)>) -> Vec<(String, FarmEvent)> {
    std::iter::from_fn(|| feed.recv_timeout(Duration::from_millis(300)).ok()).collect()
}

#[test]
fn sigkill_of_a_worker_mid_job_loses_nothing_and_duplicates_nothing() {
    let server = NatsServer::start();
    let lim = limits(2000);
    let (client, probe) = connect(&server, &lim);
    let feed = probe.watch_events().unwrap();
    let mut workers = [
        worker(&server, "w1", 150, 2000),
        worker(&server, "w2", 150, 2000),
    ];
    let mut ids = Vec::new();
    let mut hashes = HashSet::new();
    for i in 0..8 {
        let player = format!("p{}", i % 2);
        let id = client
            .submit(request(&format!("crate {i}"), Some(&player), 6))
            .unwrap();
        hashes.insert(client.hash_of(id).unwrap());
        ids.push(id);
    }
    // Another player asks for the same pixels as the first: it shares that job.
    let shared = client.submit(request("crate 0", Some("p9"), 6)).unwrap();
    assert_eq!(client.hash_of(shared), client.hash_of(ids[0]));
    ids.push(shared);

    // SIGKILL the worker that reports progress first, mid-job.
    let mut wire = Vec::new();
    let (killed_hash, killed_worker) = loop {
        let (hash, ev) = feed
            .recv_timeout(Duration::from_secs(30))
            .expect("a first progress event");
        wire.push((hash.clone(), ev.clone()));
        if let FarmEvent::Progress { worker, .. } = ev {
            break (hash, worker);
        }
    };
    workers
        .iter_mut()
        .find(|w| w.name == killed_worker)
        .unwrap()
        .kill9();

    let events = collect(&client, &ids, Duration::from_secs(90));
    wire.extend(drain(&feed));
    for &id in &ids {
        let t = terminals(&events, id);
        assert_eq!(t.len(), 1, "request {id}: terminal events {t:?}");
        assert!(
            matches!(t[0], WorkerEvent::Finished { .. }),
            "request {id}: {t:?}"
        );
    }
    // On the wire too: one terminal message per job.
    for hash in &hashes {
        let n = wire
            .iter()
            .filter(|(h, e)| h == hash && e.is_terminal())
            .count();
        assert_eq!(n, 1, "job {hash}: {n} terminal messages on the wire");
    }
    let deliveries: Vec<u32> = wire
        .iter()
        .filter_map(|(h, e)| match e {
            FarmEvent::Started { delivery, .. } if *h == killed_hash => Some(*delivery),
            _ => None,
        })
        .collect();
    assert!(
        deliveries.len() >= 2 && deliveries.iter().any(|d| *d >= 2),
        "killed job's deliveries: {deliveries:?}"
    );
    let mut objects = probe.objects().unwrap();
    objects.sort();
    let mut expected: Vec<String> = hashes.into_iter().collect();
    expected.sort();
    assert_eq!(objects, expected, "exactly one object per distinct hash");
    assert_eq!(
        settled_queue(&probe),
        QueueState::default(),
        "stream empty, nothing pending"
    );
}

#[test]
fn a_duplicate_submit_shares_the_job() {
    let server = NatsServer::start();
    let lim = limits(5000);
    let (client, probe) = connect(&server, &lim);
    let feed = probe.watch_events().unwrap();
    let ids: Vec<RequestId> = ["ann", "bob", "ann"]
        .iter()
        .map(|p| client.submit(request("a mossy rock", Some(p), 3)).unwrap())
        .collect();
    assert_eq!(
        probe.queue().unwrap().messages,
        1,
        "three submits, one job in the stream"
    );
    let _w = worker(&server, "w1", 20, 5000);
    let events = collect(&client, &ids, Duration::from_secs(30));
    let mut pixels = Vec::new();
    for &id in &ids {
        match terminals(&events, id)[..] {
            [WorkerEvent::Finished { image, .. }] => pixels.push(image.clone()),
            ref other => panic!("request {id}: {other:?}"),
        }
    }
    assert!(pixels.windows(2).all(|w| w[0] == w[1]));
    let runs = drain(&feed)
        .iter()
        .filter(|(_, e)| matches!(e, FarmEvent::Started { .. }))
        .count();
    assert_eq!(runs, 1, "the job ran once");
    assert_eq!(probe.objects().unwrap().len(), 1);
    // The same request again, after it finished: answered from the stored result.
    let again = client
        .submit(request("a mossy rock", Some("cy"), 3))
        .unwrap();
    let events = collect(&client, &[again], Duration::from_secs(30));
    assert!(matches!(
        terminals(&events, again)[..],
        [WorkerEvent::Finished { .. }]
    ));
    let reruns = drain(&feed)
        .iter()
        .filter(|(_, e)| matches!(e, FarmEvent::Started { .. }))
        .count();
    assert_eq!(reruns, 0, "a finished job is not run again");
    assert_eq!(settled_queue(&probe), QueueState::default());
}

#[test]
fn the_broker_refuses_a_players_quota_plus_one_and_the_global_bound() {
    let server = NatsServer::start();
    let lim = FarmLimits {
        max_per_player: 3,
        max_queued: 5,
        ..limits(5000)
    };
    let (client, probe) = connect(&server, &lim);
    for i in 0..3 {
        client
            .submit(request(&format!("ann {i}"), Some("ann"), 2))
            .unwrap();
    }
    let refused = client.submit(request("ann 3", Some("ann"), 2)).unwrap_err();
    assert_eq!(
        refused,
        SubmitError::PlayerQuota {
            player: "ann".into(),
            queued: 3,
            limit: 3
        }
    );
    assert!(refused.to_string().contains("limit 3"), "{refused}");
    // Another player is not affected, up to the global bound of 5.
    client.submit(request("bob 0", Some("bob"), 2)).unwrap();
    client.submit(request("bob 1", Some("bob"), 2)).unwrap();
    let full = client.submit(request("cy 0", Some("cy"), 2)).unwrap_err();
    assert_eq!(
        full,
        SubmitError::QueueFull {
            queued: 5,
            limit: 5
        }
    );
    assert_eq!(probe.queue().unwrap().messages, 5);
    // A second client (another game server) meets the same broker-held limits.
    let (other, _) = connect(&server, &lim);
    assert_eq!(
        other
            .submit(request("ann 4", Some("ann"), 2))
            .unwrap_err()
            .kind(),
        "player_quota"
    );
    // Once the jobs are done, the player may submit again.
    let _w = worker(&server, "w1", 5, 5000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.queue().unwrap().messages > 0 {
        assert!(Instant::now() < deadline, "the queue never drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    client.submit(request("ann 5", Some("ann"), 2)).unwrap();
}

#[test]
fn cancel_stops_one_request_within_a_step_and_leaves_the_others() {
    let server = NatsServer::start();
    let lim = limits(5000);
    let (client, probe) = connect(&server, &lim);
    let feed = probe.watch_events().unwrap();
    let a = client.submit(request("long a", Some("ann"), 40)).unwrap();
    let b = client.submit(request("queued b", Some("ann"), 3)).unwrap();
    let c = client.submit(request("queued c", Some("bob"), 3)).unwrap();
    let (hash_a, hash_b) = (client.hash_of(a).unwrap(), client.hash_of(b).unwrap());
    let _w = worker(&server, "w1", 250, 5000);
    let mut before = Vec::new();
    let seen = loop {
        let e = client
            .events()
            .recv_timeout(Duration::from_secs(30))
            .expect("progress of a");
        let step = match &e {
            WorkerEvent::Progress { id, step, .. } if *id == a => Some(*step),
            _ => None,
        };
        before.push(e);
        if let Some(s) = step.filter(|s| *s >= 2) {
            break s;
        }
    };
    assert!(client.cancel(a));
    assert!(
        !client.cancel(a),
        "a second cancel of the same id is a no-op"
    );
    assert!(client.cancel(b));
    let events = collect(&client, &[a, b, c], Duration::from_secs(60));
    assert!(matches!(
        terminals(&events, a)[..],
        [WorkerEvent::Cancelled { .. }]
    ));
    assert!(matches!(
        terminals(&events, b)[..],
        [WorkerEvent::Cancelled { .. }]
    ));
    assert!(matches!(
        terminals(&events, c)[..],
        [WorkerEvent::Finished { .. }]
    ));
    let after = events[&a]
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Progress { .. }))
        .count();
    assert!(
        after <= 1,
        "{after} steps of a ran after its cancel (seen step {seen})"
    );
    let wire = drain(&feed);
    let stopped_at = wire.iter().find_map(|(h, e)| match e {
        FarmEvent::Cancelled { step, .. } if *h == hash_a => Some(*step),
        _ => None,
    });
    assert!(
        stopped_at.is_some_and(|s| s <= seen + 1 && s < 40),
        "a stopped at {stopped_at:?}, cancel at {seen}"
    );
    assert!(
        !wire
            .iter()
            .any(|(h, e)| *h == hash_b && matches!(e, FarmEvent::Started { .. })),
        "b was cancelled while queued and never ran"
    );
    assert_eq!(settled_queue(&probe), QueueState::default());
}

#[test]
fn a_job_that_keeps_failing_ends_failed_after_the_configured_deliveries() {
    let server = NatsServer::start();
    let lim = limits(5000);
    let (client, probe) = connect(&server, &lim);
    let feed = probe.watch_events().unwrap();
    let _w = worker(&server, "w1", 5, 5000);
    let bad = client
        .submit(request("fail: the generator refuses", Some("ann"), 2))
        .unwrap();
    let good = client.submit(request("fine", Some("ann"), 2)).unwrap();
    let hash = client.hash_of(bad).unwrap();
    let events = collect(&client, &[bad, good], Duration::from_secs(60));
    match terminals(&events, bad)[..] {
        [WorkerEvent::Failed { error, .. }] => {
            assert!(error.to_string().contains("always fails"), "{error}")
        }
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(
        terminals(&events, good)[..],
        [WorkerEvent::Finished { .. }]
    ));
    let runs: Vec<u32> = drain(&feed)
        .iter()
        .filter_map(|(h, e)| match e {
            FarmEvent::Started { delivery, .. } if *h == hash => Some(*delivery),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec![1, 2, 3], "max_deliveries = 3 runs");
    assert_eq!(
        probe.state(&hash).unwrap().map(|s| s.state),
        Some("failed".into())
    );
    assert_eq!(settled_queue(&probe), QueueState::default());
}

#[test]
fn a_broker_restart_mid_run_loses_nothing_acknowledged() {
    broker_restart_mid_run(NatsServer::restart);
}

/// SIGKILL instead of SIGTERM: acknowledged removals nats-server 2.9 had not written yet come
/// back as messages below the consumers' ack floors, and the workers' sweep deletes them, so the
/// stream still ends empty.
#[test]
fn a_broker_sigkill_mid_run_loses_nothing_and_leaves_nothing_queued() {
    broker_restart_mid_run(NatsServer::kill9_restart);
}

fn broker_restart_mid_run(restart: fn(&mut NatsServer)) {
    let mut server = NatsServer::start();
    let lim = limits(2000);
    let (client, probe) = connect(&server, &lim);
    let _w = worker(&server, "w1", 100, 2000);
    let ids: Vec<RequestId> = (0..6)
        .map(|i| {
            client
                .submit(request(&format!("tile {i}"), Some("ann"), 5))
                .unwrap()
        })
        .collect();
    let mut finished = 0;
    let mut early = Vec::new();
    while finished < 2 {
        let e = client
            .events()
            .recv_timeout(Duration::from_secs(30))
            .expect("two jobs finish");
        finished += usize::from(matches!(e, WorkerEvent::Finished { .. }));
        early.push(e);
    }
    restart(&mut server);
    let done_early: Vec<RequestId> = early
        .iter()
        .filter(|e| is_terminal(e))
        .filter_map(event_id)
        .collect();
    let rest: Vec<RequestId> = ids
        .iter()
        .copied()
        .filter(|id| !done_early.contains(id))
        .collect();
    let mut events = collect(&client, &rest, Duration::from_secs(120));
    for e in early {
        if let Some(id) = event_id(&e) {
            events.entry(id).or_default().insert(0, e);
        }
    }
    for &id in &ids {
        let t = terminals(&events, id);
        assert_eq!(t.len(), 1, "request {id}: {t:?}");
        assert!(
            matches!(t[0], WorkerEvent::Finished { .. }),
            "request {id}: {t:?}"
        );
    }
    drop(probe);
    let probe = FarmProbe::connect(&server.url(), lim).unwrap();
    assert_eq!(
        probe.objects().unwrap().len(),
        6,
        "every result survived the restart"
    );
    assert_eq!(settled_queue(&probe), QueueState::default());
}

#[test]
fn interactive_jobs_run_before_batch_jobs() {
    let server = NatsServer::start();
    let lim = limits(5000);
    let (client, probe) = connect(&server, &lim);
    let feed = probe.watch_events().unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut r = request(&format!("batch {i}"), None, 2);
        r.priority = -1;
        ids.push(client.submit(r).unwrap());
    }
    let urgent = client.submit(request("urgent", Some("ann"), 2)).unwrap();
    let urgent_hash = client.hash_of(urgent).unwrap();
    ids.push(urgent);
    let _w = worker(&server, "w1", 20, 5000);
    collect(&client, &ids, Duration::from_secs(30));
    let first = drain(&feed)
        .into_iter()
        .find(|(_, e)| matches!(e, FarmEvent::Started { .. }))
        .map(|(h, _)| h);
    assert_eq!(
        first,
        Some(urgent_hash),
        "the interactive job started first"
    );
}

/// The load figures of docs/farm.md on the test build (not in the default run): flags as the
/// `farm_load` example's, in `FARM_LOAD_ARGS`, e.g.
/// `FARM_LOAD_ARGS="--workers 2 --requests 1000" cargo test ... --test farm -- --ignored farm_load --nocapture`.
#[test]
#[ignore = "a load run of minutes: docs/farm.md"]
fn farm_load_figures() {
    let args = std::env::var("FARM_LOAD_ARGS").unwrap_or_default();
    farm_load::run_load(args.split_whitespace().map(String::from).collect(), WORKER);
}
