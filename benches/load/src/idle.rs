//! Scenario 4, idle connections: authenticated sockets held open, and the
//! server's resident memory per connection, against a bare tokio-tungstenite
//! server (4 KiB read buffer, no write buffer) holding as many. Both servers run
//! as their own processes so their RSS is theirs alone. Then the server is
//! pushed to its connection limit: it must refuse further sockets with 503.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{create_job, open_socket, rate, rss_kib, serve_args, spawn_rejoin, Tokens, Ws};
use crate::BenchArgs;

/// Holds `sockets` open, answering pings, until the returned tasks are aborted.
fn hold(ws: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ws = ws;
        while let Some(Ok(_)) = ws.next().await {}
    })
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (n, soak) = if args.smoke {
        (200, Duration::from_secs(2))
    } else {
        (19_000, Duration::from_secs(600))
    };
    let soak = args.soak_secs.map(Duration::from_secs).unwrap_or(soak);

    // The bare baseline.
    let (bare, addr) = super::spawn_baseline(&["bare-server"]).await?;
    let pid = bare.id().unwrap_or_default();
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
        held.push(hold(ws));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // let the server settle its buffers
    let bare_per = (rss_kib(pid)?.saturating_sub(before)) as f64 / n as f64;
    held.iter().for_each(|h| h.abort());
    drop(bare);
    println!("  bare tokio-tungstenite, {n} sockets       {bare_per:>8.2} KiB/connection");

    // rejoin, as its own process, with authenticated sockets on their own jobs.
    let dir = tempfile::tempdir()?;
    let db = super::database(args, dir.path(), "idle").await?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let limit = (n + 10).to_string();
    // Every client comes from 127.0.0.1: the per-address cap must not be
    // what refuses them (the socket limit is what this scenario tries).
    let (server, addr) = spawn_rejoin(&serve_args(
        "127.0.0.1:0",
        &db,
        &secret,
        &[
            "--max-connections",
            &limit,
            "--max-connections-per-address",
            UNCAPPED,
        ],
    ))
    .await?;
    let pid = server.id().unwrap_or_default();
    let tokens = Tokens::new(&secret);
    let http = reqwest::Client::new();
    let mut jobs = Vec::with_capacity(n + 20);
    for _ in 0..n + 20 {
        jobs.push(create_job(&http, &addr, &tokens.service()).await?);
    }
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    for job in &jobs[..n] {
        held.push(hold(open_socket(&addr, &tokens, *job).await?));
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "  rejoin, {n} authenticated sockets          {per:>8.2} KiB/connection   {:.2}x bare   (opened at {}/s)",
        per / bare_per,
        rate(n as f64 / opened.as_secs_f64())
    );
    println!(
        "  one node holds about {} idle connections per GiB",
        rate(1024.0 * 1024.0 / per)
    );

    // At the limit, a new socket is refused with 503 before the upgrade.
    let mut refused = 0;
    for job in &jobs[n..] {
        let url = format!(
            "ws://{addr}/ws/progress?jobId={job}&token={}",
            tokens.client(*job)
        );
        match tokio_tungstenite::connect_async(url).await {
            Ok((mut ws, _)) => {
                // Wait for `connected`: the socket's task is running and counted
                // before the next attempt.
                ws.next().await;
                held.push(hold(ws));
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) if res.status() == 503 => {
                refused += 1
            }
            Err(e) => anyhow::bail!("an unexpected failure at the limit: {e}"),
        }
    }
    println!(
        "  at the connection limit ({limit}): {refused} of 20 further sockets refused with 503"
    );

    // Soak: no growth while idle.
    let start_rss = rss_kib(pid)?;
    tokio::time::sleep(soak).await;
    let end_rss = rss_kib(pid)?;
    println!(
        "  soak {} s: RSS {} KiB -> {} KiB ({:+.1}%)",
        soak.as_secs(),
        start_rss,
        end_rss,
        (end_rss as f64 - start_rss as f64) * 100.0 / start_rss as f64
    );
    held.iter().for_each(|h| h.abort());
    drop(server);

    // Ten watchers a job: the same number of sockets over a tenth of the jobs.
    let watched = watchers_per_socket(args, n, 10).await?;
    println!(
        "  rejoin, {n} sockets, 10 per job           {watched:>8.2} KiB/connection   {:.2}x the 1:1 figure",
        watched / per
    );
    Ok(())
}

/// A per-address cap no load from one machine reaches.
pub const UNCAPPED: &str = "1000000";

/// Server memory per socket with `n` sockets, `watchers` to a job, on a
/// server of its own.
async fn watchers_per_socket(args: &BenchArgs, n: usize, watchers: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = super::database(args, dir.path(), "idle_watchers").await?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let (server, addr) = spawn_rejoin(&serve_args(
        "127.0.0.1:0",
        &db,
        &secret,
        &["--max-connections-per-address", UNCAPPED],
    ))
    .await?;
    let pid = server.id().unwrap_or_default();
    let tokens = Tokens::new(&secret);
    let http = reqwest::Client::new();
    let mut jobs = Vec::with_capacity(n / watchers);
    for _ in 0..n / watchers {
        jobs.push(create_job(&http, &addr, &tokens.service()).await?);
    }
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    for job in jobs.iter().flat_map(|j| std::iter::repeat_n(j, watchers)) {
        held.push(hold(open_socket(&addr, &tokens, *job).await?));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = (rss_kib(pid)?.saturating_sub(before)) as f64 / n as f64;
    held.iter().for_each(|h| h.abort());
    drop(server);
    Ok(per)
}

/// `rejoin-bench bare-server`: the baseline, a bare tokio-tungstenite server
/// with the same small buffers, printing its address like `rejoin serve`.
pub async fn bare_server() -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("bare server listening on http://{}", listener.local_addr()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            {
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
    }
}
