//! `cargo run --release -p bevy_diffusion_tests --example farm_load -- [--workers 3]
//! [--requests 1000] [--players 100] [--steps 4] [--step-ms 2] [--batch-every 4]
//! [--kill-every-ms 0]`
//!
//! Load on the farm with a fast stand-in generator (so the broker, not a model, is measured):
//! a local `nats-server -js`, `--workers` worker processes (this binary re-run in worker mode),
//! one submitter that keeps every player at its quota (a refused request is retried when one
//! of the player's requests ends); every `--batch-every`-th request is a batch job (priority
//! -1), the rest interactive. Prints throughput, p50/p95/p99 submit-to-done per class, the
//! deepest queue seen, the broker's overhead per job, lost and duplicated requests; with `--kill-every-ms` a random worker is
//! SIGKILLed (and a fresh one started) that often.

#[path = "fast_worker.rs"]
mod fast_worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bevy_diffusion::farm::{FarmClient, FarmLimits, FarmProbe, FarmSettings};
use bevy_diffusion::runtime::worker::WorkerEvent;
use bevy_diffusion::{GenerationRequest, RequestId, SubmitError};
use bevy_diffusion_tests::farm::{NatsServer, WorkerProcess};

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--nats") {
        return fast_worker::worker_main(args.into_iter());
    }
    let me = std::env::current_exe().expect("own path");
    run_load(args, me.to_str().expect("utf-8 path"));
}

/// Runs the load with the flags above, the workers being `worker_bin` processes (this example
/// re-run, or `farm_fast_worker`), prints the figures, and panics if a request was lost or
/// ended twice.
pub fn run_load(mut args: Vec<String>, worker_bin: &str) {
    let mut flag = |name: &str, default: u64| -> u64 {
        match args.iter().position(|a| a == name) {
            Some(i) if i + 1 < args.len() => {
                let v = args.remove(i + 1);
                args.remove(i);
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
            }
            _ => default,
        }
    };
    let workers = flag("--workers", 3) as usize;
    let requests = flag("--requests", 1000) as usize;
    let players = flag("--players", 100) as usize;
    let steps = flag("--steps", 4) as usize;
    let step_ms = flag("--step-ms", 2);
    let kill_every = flag("--kill-every-ms", 0);
    let batch_every = flag("--batch-every", 4).max(1) as usize;
    let ack_wait_ms = 2000;

    let server = NatsServer::start();
    let limits = FarmLimits {
        ack_wait: Duration::from_millis(ack_wait_ms),
        max_deliveries: 5,
        ..FarmLimits::default()
    };
    let mut settings = FarmSettings::new(server.url());
    settings.limits = limits.clone();
    let client = FarmClient::connect(settings).expect("connect");
    let probe = FarmProbe::connect(&server.url(), limits.clone()).expect("probe");
    let feed = probe.watch_events().expect("feed");
    let me = worker_bin.to_string();
    let flags = |_: usize| {
        vec![
            "--step-ms".to_string(),
            step_ms.to_string(),
            "--ack-wait-ms".into(),
            ack_wait_ms.to_string(),
            "--max-deliveries".into(),
            "5".into(),
        ]
    };
    let spawn = |n: usize| {
        let f = flags(n);
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        WorkerProcess::spawn(&me, &server.url(), &format!("w{n}"), &f)
    };
    let mut pool: Vec<WorkerProcess> = (0..workers).map(spawn).collect();
    let mut spawned = workers;

    // Per player, the requests still to submit.
    let mut todo: Vec<VecDeque<usize>> = vec![VecDeque::new(); players];
    for i in 0..requests {
        todo[i % players].push_back(i);
    }
    let mut submitted: HashMap<RequestId, (usize, Instant)> = HashMap::new();
    let mut terminal: HashMap<RequestId, usize> = HashMap::new();
    // Submit-to-done, interactive and batch.
    let mut latencies: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let (mut deepest, mut last_sample) = (0u64, Instant::now());
    let (mut refused, mut failed, mut kills) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    let mut last_kill = Instant::now();
    let mut blocked: HashSet<usize> = HashSet::new();
    while terminal.len() < requests {
        for (p, queue) in todo.iter_mut().enumerate() {
            if blocked.contains(&p) {
                continue;
            }
            while let Some(&i) = queue.front() {
                let r = GenerationRequest {
                    prompt: format!("load {i}"),
                    seed: i as u64,
                    width: 64,
                    height: 64,
                    num_inference_steps: Some(steps),
                    player: Some(format!("player{p}")),
                    priority: if i % batch_every == batch_every - 1 {
                        -1
                    } else {
                        0
                    },
                    ..Default::default()
                };
                match client.submit(r) {
                    Ok(id) => {
                        submitted.insert(id, (i, Instant::now()));
                        queue.pop_front();
                    }
                    Err(SubmitError::PlayerQuota { .. }) => {
                        refused += 1;
                        blocked.insert(p);
                        break;
                    }
                    Err(e) => panic!("submit: {e}"),
                }
            }
        }
        while let Ok(e) = client.events().recv_timeout(Duration::from_millis(5)) {
            let (id, ok) = match e {
                WorkerEvent::Finished { id, .. } => (id, true),
                WorkerEvent::Failed { id, .. } | WorkerEvent::Cancelled { id } => (id, false),
                _ => continue,
            };
            *terminal.entry(id).or_default() += 1;
            failed += usize::from(!ok);
            if let Some((i, at)) = submitted.get(&id) {
                let batch = i % batch_every == batch_every - 1;
                latencies[usize::from(batch)].push(at.elapsed());
                blocked.remove(&(i % players));
            }
        }
        if last_sample.elapsed() >= Duration::from_millis(250) {
            deepest = deepest.max(probe.queue().map(|q| q.messages).unwrap_or(0));
            last_sample = Instant::now();
        }
        if kill_every > 0 && last_kill.elapsed() >= Duration::from_millis(kill_every) {
            let victim = kills % pool.len();
            pool[victim].kill9();
            pool[victim] = spawn(spawned);
            spawned += 1;
            kills += 1;
            last_kill = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "load run did not finish in 10 min"
        );
    }
    let wall = started.elapsed();
    // Late duplicates, if any.
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(e) = client.events().try_recv() {
        if let WorkerEvent::Finished { id, .. } | WorkerEvent::Failed { id, .. } = e {
            *terminal.entry(id).or_default() += 1;
        }
    }
    let mut wire_terminals: HashMap<String, usize> = HashMap::new();
    let mut deliveries_over_1 = 0;
    while let Ok((hash, ev)) = feed.try_recv() {
        if ev.is_terminal() {
            *wire_terminals.entry(hash).or_default() += 1;
        } else if let bevy_diffusion::farm::schema::FarmEvent::Started { delivery, .. } = ev {
            deliveries_over_1 += usize::from(delivery > 1);
        }
    }
    for l in &mut latencies {
        l.sort();
    }
    let pct = |class: usize, q: f64| {
        let l = &latencies[class];
        if l.is_empty() {
            return f64::NAN;
        }
        l[((l.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
    };
    let lost = requests - terminal.len();
    let duplicated = terminal.values().filter(|n| **n > 1).count();
    let wire_dups = wire_terminals.values().filter(|n| **n > 1).count();
    let gen_ms = (steps as u64 * step_ms) as f64;
    let per_job_slot_ms = wall.as_secs_f64() * 1000.0 * workers as f64 / requests as f64;
    let q = probe.queue().expect("queue");
    println!(
        "farm_load: {requests} requests, {players} players, {workers} workers x 1 slot, {steps} steps x {step_ms} ms"
    );
    println!(
        "  kill every {kill_every} ms: {kills} workers SIGKILLed, {deliveries_over_1} redeliveries"
    );
    println!(
        "  wall {:.2} s, throughput {:.1} jobs/s",
        wall.as_secs_f64(),
        requests as f64 / wall.as_secs_f64()
    );
    for (class, name) in [(0, "interactive"), (1, "batch")] {
        println!(
            "  {name} ({} requests): submit-to-done p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
            latencies[class].len(),
            pct(class, 0.5),
            pct(class, 0.95),
            pct(class, 0.99)
        );
    }
    println!("  deepest queue seen (stream messages, sampled every 250 ms): {deepest}");
    println!(
        "  broker overhead per job {:.2} ms (slot time per job {:.2} ms - generator {:.2} ms)",
        per_job_slot_ms - gen_ms,
        per_job_slot_ms,
        gen_ms
    );
    println!(
        "  quota refusals retried {refused}; failed {failed}; lost {lost}; duplicated {duplicated} (client), {wire_dups} (wire)"
    );
    println!(
        "  stream after: {q:?}; objects {}",
        probe.objects().map(|o| o.len()).unwrap_or(0)
    );
    assert_eq!(
        (lost, duplicated, wire_dups),
        (0, 0, 0),
        "lost / duplicated requests"
    );
}
