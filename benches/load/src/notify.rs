//! Scenario: the cost of webhook notifications under load. The fan-out load
//! (1,000 sockets, one per job, 500 progress POSTs a second) runs beside 50
//! unwatched jobs a second that are created and completed: on a server
//! without a webhook (the baseline), then on one that notifies a receiver on
//! loopback for each of them, alternating, three rounds. Then 64 appenders,
//! each ending its job every 100 events, through the engine without and with
//! the receiver, alternating, three rounds. Reported: medians and their
//! ratios, and each notification's delay from the job's end to the receiver,
//! with lost and duplicate deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rejoin_testkit::Receiver;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fanout::{configuration, Load, Server};
use super::{database, progress, rate, Latencies};
use crate::BenchArgs;
use rejoin::clock::SystemClock;
use rejoin::domain::event::{EventBody, JobCompleted};
use rejoin::engine::{Engine, EngineSettings};
use rejoin::webhook::{Endpoint, WebhookArgs};

const APPENDERS: usize = 64;
const ROUNDS: usize = 3;

fn webhook_args(url: &str) -> WebhookArgs {
    WebhookArgs {
        webhook_url: Some(url.to_owned()),
        webhook_secret: Some(rejoin::webhook::format_secret(&[9; 32])),
        webhook_secret_file: None,
        webhook_timeout_secs: 10.0,
        webhook_retry_base_secs: 1.0,
        webhook_retry_cap_secs: 300.0,
        webhook_max_age_secs: 86_400.0,
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (load, ends_per_sec, appends) = if args.smoke {
        (
            Load {
                clients: 50,
                watchers: 1,
                per_sec: 200,
                secs: 2,
            },
            20,
            6_400,
        )
    } else {
        (
            Load {
                clients: 1_000,
                watchers: 1,
                per_sec: 500,
                secs: 20,
            },
            50,
            128_000,
        )
    };

    let rounds = if args.smoke { 1 } else { ROUNDS };
    let (mut plain, mut hooked) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut m = configuration(args, &load, Server::Rejoin(&[]), ends_per_sec).await?;
        println!("  (baseline: no webhook)");
        plain.push(percentiles(&mut m.latencies));
        let receiver = Receiver::start().await;
        let w = webhook_args(&receiver.url());
        let flags = vec![
            "--webhook-url".to_owned(),
            receiver.url(),
            "--webhook-secret".to_owned(),
            w.webhook_secret.as_ref().unwrap().expose().to_owned(),
        ];
        let mut m = configuration(args, &load, Server::Rejoin(&flags), ends_per_sec).await?;
        println!("  (with a receiver: every unwatched job's end notified)");
        hooked.push(percentiles(&mut m.latencies));
        report_deliveries(&receiver, &m.ended).await;
    }
    let med = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        median(&mut v.iter().map(pick).collect::<Vec<_>>())
    };
    let (p50, p99) = (|p: &(f64, f64)| p.0, |p: &(f64, f64)| p.1);
    println!(
        "  fan-out with a receiver vs without (median of {rounds}): p50 {:.2} vs {:.2} ms ({:.2}x), p99 {:.2} vs {:.2} ms ({:.2}x)",
        med(&hooked, p50),
        med(&plain, p50),
        med(&hooked, p50) / med(&plain, p50),
        med(&hooked, p99),
        med(&plain, p99),
        med(&hooked, p99) / med(&plain, p99),
    );

    // Alternating rounds, medians: this machine's append rate drifts more
    // from one run to the next than the cost measured here.
    let dir = tempfile::tempdir()?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut due = 0;
    let mut received = 0;
    for round in 0..ROUNDS {
        let plain = database(args, dir.path(), &format!("plain{round}")).await?;
        without.push(ending_appends(&plain, appends, None).await?);
        let receiver = Receiver::start().await;
        let hooked = database(args, dir.path(), &format!("hooked{round}")).await?;
        with.push(ending_appends(&hooked, appends, Some(&receiver)).await?);
        due += appends / 100;
        received += receiver.requests().len();
    }
    let (without, with) = (median(&mut without), median(&mut with));
    println!(
        "  engine, {APPENDERS} appenders, a job ends every 100 events (median of {ROUNDS}): {:>9} appends/s without a webhook, {:>9} with ({:.2}x)",
        rate(without),
        rate(with),
        with / without
    );
    println!("  notifications from the appenders: due {due}, received {received}");
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// p50 and p99, in milliseconds.
fn percentiles(l: &mut Latencies) -> (f64, f64) {
    (
        l.percentile(50.0).as_secs_f64() * 1e3,
        l.percentile(99.0).as_secs_f64() * 1e3,
    )
}

/// Waits for a notification of every ended job and prints how long each
/// took from the job's end (the body's `at`) to the receiver.
async fn report_deliveries(receiver: &Receiver, ended: &[Uuid]) {
    let requests = receiver.wait_for(ended.len()).await;
    let mut delays = Latencies::default();
    let mut ids = std::collections::HashSet::new();
    let mut duplicates = 0;
    for r in &requests {
        if !ids.insert(r.id.clone()) {
            duplicates += 1;
            continue;
        }
        let at: Option<DateTime<Utc>> = serde_json::from_value(r.json["at"].clone()).ok();
        if let Some(at) = at {
            delays.push((r.at - at).to_std().unwrap_or(Duration::ZERO));
        }
    }
    println!(
        "  notifications: due {}, delivered {}, lost {}, duplicates {}; job end to receiver  {}",
        ended.len(),
        ids.len(),
        ended.len().saturating_sub(ids.len()),
        duplicates,
        delays.summary()
    );
}

/// 64 appenders through an engine of its own, each appending 99 progress
/// events and a `completed` to one job after another, `total` events in
/// all; appends per second.
async fn ending_appends(
    url: &str,
    total: usize,
    receiver: Option<&Receiver>,
) -> anyhow::Result<f64> {
    let webhook = match receiver {
        Some(r) => Endpoint::from_args(&webhook_args(&r.url()), None)?.map(Arc::new),
        None => None,
    };
    let store = rejoin::log::open(url).await?;
    let stop = CancellationToken::new();
    let settings = EngineSettings {
        webhook,
        ..EngineSettings::default()
    };
    let rejoin::engine::Started { engine, tasks, .. } =
        Engine::start(store.clone(), Arc::new(SystemClock), settings, stop.clone()).await?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..APPENDERS {
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            let mut job = Uuid::new_v4();
            engine.create_job(job, None).await?;
            for i in 1..=total / APPENDERS {
                if i % 100 == 0 {
                    let done = EventBody::JobCompleted(JobCompleted { result: None });
                    engine.append(job, done, None).await?;
                    job = Uuid::new_v4();
                    engine.create_job(job, None).await?;
                } else {
                    engine.append(job, progress((i % 100) as f64), None).await?;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let per_sec = total as f64 / started.elapsed().as_secs_f64();
    // Every notification reaches the receiver before the engine stops.
    if let Some(r) = receiver {
        r.wait_for(total / 100).await;
    }
    stop.cancel();
    tasks.writer.await?;
    tasks.scheduler.await?;
    store.events.close().await;
    Ok(per_sec)
}
