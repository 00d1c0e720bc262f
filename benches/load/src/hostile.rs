//! Scenarios 12–14, what a hostile or merely large load costs the server,
//! each against a server of its own as its own process (so its CPU time and
//! memory are its alone):
//!
//! - `readers`: the server CPU of 2,000 stream appends (16 clients) with and
//!   without 300 idle SSE readers on 300 other streams, alternating
//!   `--runs` times; the ratio is what the idle readers add.
//! - `large`: 40 appends of 8 MiB to one stream (320 MiB), a restart, one
//!   read of the whole stream from the start and a HEAD: the server's peak
//!   RSS (`VmHWM`) after the cold start (the first server SIGKILLed, so the
//!   start folds every large event) and after the read, against the same
//!   server's idle RSS.
//! - `churn`: 400 watchers on 40 jobs, each cut by a TCP reset every ~2 s
//!   and resumed, with 20 progress events a second, for `--soak-secs`
//!   (1,800 s; 1 with `--smoke`): anonymous RSS every minute (every half
//!   second with `--smoke`), and the spread of the last third of the samples.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{database, random_below, serve_args, spawn_rejoin, status_kib, Sample, Tokens};
use crate::BenchArgs;

/// CPU time (user and system) the process has used, from `/proc`.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// A server process for one of these scenarios: its child, address and the
/// stream token.
async fn start(
    db: &str,
    secret: &str,
    extra: &[&str],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut args: Vec<&str> = vec!["--max-connections-per-address", "100000"];
    args.extend_from_slice(extra);
    spawn_rejoin(&serve_args("127.0.0.1:0", db, secret, &args)).await
}

async fn stop(mut child: tokio::process::Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    Ok(())
}

pub async fn readers(args: &BenchArgs) -> anyhow::Result<()> {
    let (appends, idle) = if args.smoke { (32, 4) } else { (2_000, 300) };
    let dir = tempfile::tempdir()?;
    let db = database(args, dir.path(), "readers").await?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let (child, addr) = start(&db, &secret, &[]).await?;
    let pid = child.id().unwrap_or_default();
    let token = Tokens::new(&secret).mint("stream", None);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let url = |path: &str| format!("http://{addr}/v1/stream/{path}");
    for path in std::iter::once("target".to_owned()).chain((0..idle).map(|i| format!("idle-{i}"))) {
        http.put(url(&path))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .send()
            .await?
            .error_for_status()?;
    }
    let append_cpu = |n: usize| {
        let (http, target, token) = (http.clone(), url("target"), token.clone());
        async move {
            let before = cpu_secs(pid)?;
            let mut clients = Vec::new();
            for _ in 0..16 {
                let (http, target, token) = (http.clone(), target.clone(), token.clone());
                clients.push(tokio::spawn(async move {
                    for _ in 0..n / 16 {
                        http.post(&target)
                            .bearer_auth(&token)
                            .header("content-type", "text/plain")
                            .body("a line of a log, as a stream would carry it\n")
                            .send()
                            .await?
                            .error_for_status()?;
                    }
                    Ok::<_, anyhow::Error>(())
                }));
            }
            for c in clients {
                c.await??;
            }
            anyhow::Ok(cpu_secs(pid)? - before)
        }
    };
    let (mut without, mut with) = (Sample::default(), Sample::default());
    let mut held = Vec::new();
    for run in 0..args.runs() {
        without.push(append_cpu(appends).await?);
        // The idle readers: each an SSE response from the tail, held open.
        for i in 0..idle {
            let res = http
                .get(url(&format!("idle-{i}?offset=now&live=sse")))
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?;
            let mut body = res.bytes_stream();
            // Its first control event: the reader is waiting.
            body.next().await;
            held.push(tokio::spawn(
                async move { while body.next().await.is_some() {} },
            ));
        }
        with.push(append_cpu(appends).await?);
        held.drain(..).for_each(|h| h.abort());
        println!(
            "  run {}: {appends} appends, {:.3} s CPU alone, {:.3} s with {idle} idle SSE readers",
            run + 1,
            without.0.last().copied().unwrap_or_default(),
            with.0.last().copied().unwrap_or_default()
        );
    }
    let (a, b) = (without.median(), with.median());
    println!(
        "  {appends} stream appends: {a:.3} s server CPU alone, {b:.3} s beside {idle} idle SSE readers on other streams: {:.2}×",
        b / a.max(1e-9)
    );
    // Its idle keep-alive connections would hold the server's graceful stop.
    drop(http);
    stop(child).await
}

pub async fn large(args: &BenchArgs) -> anyhow::Result<()> {
    let (count, size) = if args.smoke {
        (2, 256 << 10)
    } else {
        (40, 8 << 20)
    };
    let dir = tempfile::tempdir()?;
    let db = database(args, dir.path(), "large").await?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let max = (size + 1024).to_string();
    let extra = ["--stream-max-body-bytes", max.as_str()];
    let token = Tokens::new(&secret).mint("stream", None);
    let http = reqwest::Client::new();
    let (child, addr) = start(&db, &secret, &extra).await?;
    let url = format!("http://{addr}/v1/stream/large");
    http.put(&url)
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .send()
        .await?
        .error_for_status()?;
    let body = vec![b'x'; size];
    for _ in 0..count {
        http.post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await?
            .error_for_status()?;
    }
    let written = status_kib(child.id().unwrap_or_default(), "VmHWM")?;
    // Killed, not stopped: no shutdown checkpoint, so the next start folds
    // every one of the large events (the coldest start there is).
    let mut child = child;
    child.kill().await?;

    let (child, addr) = start(&db, &secret, &extra).await?;
    let pid = child.id().unwrap_or_default();
    let idle = status_kib(pid, "VmRSS")?;
    let started = status_kib(pid, "VmHWM")?;
    let url = format!("http://{addr}/v1/stream/large");
    // The whole stream from the start, chunk by chunk as a client reads it.
    let mut read = 0usize;
    let began = Instant::now();
    super::read_stream_pages(&http, &url, &token, |body| {
        read += body.len();
        Ok(())
    })
    .await?;
    let took = began.elapsed();
    http.head(&url)
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?;
    let peak = status_kib(pid, "VmHWM")?;
    stop(child).await?;
    anyhow::ensure!(
        read == count * size,
        "read {read} bytes of {}",
        count * size
    );
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "  {count} appends of {} MiB: peak RSS {:.0} MiB while written; after a SIGKILL and a restart {:.0} MiB idle, {:.0} MiB peak after the cold start, {:.0} MiB peak after reading all {} MiB ({:.1} s) and a HEAD",
        size >> 20,
        mib(written),
        mib(idle),
        mib(started),
        mib(peak),
        (count * size) >> 20,
        took.as_secs_f64()
    );
    Ok(())
}

pub async fn churn(args: &BenchArgs) -> anyhow::Result<()> {
    let (jobs, per_job) = if args.smoke { (2, 2) } else { (40, 10) };
    let soak = Duration::from_secs(args.soak_secs.unwrap_or(if args.smoke { 1 } else { 1_800 }));
    let every = if args.smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(60)
    };
    let dir = tempfile::tempdir()?;
    let db = database(args, dir.path(), "churn").await?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let (child, addr) = start(&db, &secret, &[]).await?;
    let pid = child.id().unwrap_or_default();
    let tokens = Tokens::new(&secret);
    let service = tokens.mint("service", None);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..jobs {
        ids.push(super::create_job(&http, &addr, &service).await?);
    }
    let resumes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + soak;
    let mut tasks = Vec::new();
    for (i, job) in ids
        .iter()
        .enumerate()
        .flat_map(|(i, j)| std::iter::repeat_n((i, *j), per_job))
    {
        let (addr, token, resumes) = (addr.clone(), tokens.client(job), resumes.clone());
        let _ = i;
        tasks.push(tokio::spawn(async move {
            let (mut session, mut last, mut epoch) = (None::<String>, 0i64, None::<String>);
            while Instant::now() < deadline {
                let mut url = format!("ws://{addr}/ws/progress?jobId={job}&token={token}");
                if let (Some(s), Some(e)) = (&session, &epoch) {
                    url.push_str(&format!(
                        "&reconnect=true&sessionId={s}&lastSeq={last}&epoch={e}"
                    ));
                }
                let Ok(Ok((ws, _))) = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio_tungstenite::connect_async(url),
                )
                .await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                if session.is_some() {
                    resumes.fetch_add(1, Ordering::Relaxed);
                }
                let (_, mut rx) = ws.split();
                // Held ~2 s (1–3 s), reading, then reset.
                let hold = Duration::from_millis(1_000 + random_below(2_000));
                let _ = tokio::time::timeout(hold, async {
                    while let Some(Ok(msg)) = rx.next().await {
                        let Ok(v) =
                            serde_json::from_str::<serde_json::Value>(msg.to_text().unwrap_or(""))
                        else {
                            continue;
                        };
                        if let Some(s) = v["sessionId"].as_str() {
                            session = Some(s.to_owned());
                        }
                        if let Some(e) = v["epoch"].as_str() {
                            epoch = Some(e.to_owned());
                        }
                        if let Some(seq) = v["seq"].as_i64() {
                            last = last.max(seq);
                        }
                    }
                })
                .await;
                // Dropped without a close frame: the server sees a reset.
                drop(rx);
            }
        }));
    }
    // 20 progress events a second across the jobs.
    let poster = {
        let (http, addr, service, ids) = (http.clone(), addr.clone(), service.clone(), ids.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0usize;
            while Instant::now() < deadline {
                tick.tick().await;
                let job = ids[n % ids.len()];
                n += 1;
                let _ = http
                    .post(format!("http://{addr}/v1/jobs/{job}/events"))
                    .bearer_auth(&service)
                    .json(&serde_json::json!({"type": "progress", "progress": (n % 100) as f64}))
                    .send()
                    .await;
            }
        })
    };
    let mut samples = Vec::new();
    let started = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
        let anon = status_kib(pid, "RssAnon")?;
        samples.push(anon);
        println!(
            "  {:>5.0} s: anonymous RSS {:.1} MB, {} resumes so far",
            started.elapsed().as_secs_f64(),
            anon as f64 / 1024.0,
            resumes.load(Ordering::Relaxed)
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = poster.await;
    drop(http);
    stop(child).await?;
    let tail = &samples[samples.len() - samples.len().div_ceil(3)..];
    let (lo, hi) = (
        *tail.iter().min().unwrap_or(&0) as f64,
        *tail.iter().max().unwrap_or(&0) as f64,
    );
    println!(
        "  {} watchers on {jobs} jobs, reset every ~2 s, {:.0} s: {} resumes; anonymous RSS {:.1} → {:.1} MB; the last third within {:.1} % of each other",
        jobs * per_job,
        soak.as_secs_f64(),
        resumes.load(Ordering::Relaxed),
        samples.first().copied().unwrap_or_default() as f64 / 1024.0,
        samples.last().copied().unwrap_or_default() as f64 / 1024.0,
        (hi - lo) / lo.max(1.0) * 100.0
    );
    Ok(())
}
