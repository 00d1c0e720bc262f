//! Property tests: random command sequences, decided and sealed as the writer
//! does, fold to the same state incrementally, from scratch out of their stored
//! rows, and from any snapshot onwards; the hash chain they build verifies; the
//! client message decoder answers every input without panicking.
//!
//! `PROPTEST_CASES=5000 cargo test --release --test properties` runs the long form.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use rejoin::domain::decide::Attach;
use rejoin::domain::event::{
    ConnectRejected, FailureInfo, JobCancelled, JobCompleted, JobFailed, MessagePosted,
    ProgressReported, WsErrored,
};
use rejoin::domain::{decide, Command, Decision, Event, EventBody, JobState, SessionPhase, World};
use rejoin::log::chain::{event_hash, seal};
use rejoin::log::EventRow;
use rejoin::ws::protocol::parse_client_message;
use serde_json::json;
use uuid::Uuid;

const EPOCH: &str = "log-epoch";

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    Create,
    Progress(f64),
    Message(String),
    Complete,
    Fail,
    Cancel,
    Connect { reconnect: bool, behind: i64 },
    Disconnect { code: u16 },
    ExpireGrace,
    SocketError,
    Rejected,
    Keyed { key: u8, progress: f64 },
    Wait(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Create),
        6 => (0.0f64..=100.0).prop_map(Op::Progress),
        2 => "[a-z_]{1,12}".prop_map(Op::Message),
        1 => Just(Op::Complete),
        1 => Just(Op::Fail),
        1 => Just(Op::Cancel),
        4 => (any::<bool>(), 0i64..5).prop_map(|(reconnect, behind)| Op::Connect { reconnect, behind }),
        3 => prop::sample::select(vec![1000u16, 1001, 1006, 1011, 1012, 4000]).prop_map(|code| Op::Disconnect { code }),
        2 => Just(Op::ExpireGrace),
        1 => Just(Op::SocketError),
        1 => Just(Op::Rejected),
        2 => (0u8..4, 0.0f64..=100.0).prop_map(|(key, progress)| Op::Keyed { key, progress }),
        2 => (1i64..120).prop_map(Op::Wait),
    ]
}

/// Runs `ops` against jobs chosen by index, as the writer would: decide on the
/// current state, seal (seq, hash, apply) each planned event. Returns the
/// stored rows and the world folded along the way.
fn run(ops: &[(usize, Op)], jobs: &[Uuid]) -> (Vec<EventRow>, World) {
    let mut world = World::default();
    let mut rows = Vec::new();
    let mut now: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap();
    let grace = Duration::seconds(60);
    for (i, op) in ops {
        let job = jobs[*i % jobs.len()];
        now += Duration::milliseconds(250);
        let state = world
            .jobs
            .get(&job)
            .cloned()
            .unwrap_or_else(|| JobState::genesis(job));
        // The most recently started watcher (several may be open).
        let live_session = state
            .watchers
            .last()
            .map(|s| (s.session_id, s.sockets, s.phase));
        let (command, key) = match op {
            Op::Wait(secs) => {
                now += Duration::seconds(*secs);
                continue;
            }
            Op::Create => (
                Command::CreateJob {
                    metadata: Some(json!({"n": 1})),
                    stall_after_secs: 30,
                    timeout_secs: 0,
                    notify: Default::default(),
                },
                None,
            ),
            Op::Progress(p) => (
                append(
                    EventBody::ProgressReported(ProgressReported {
                        progress: *p,
                        message: Some("step".into()),
                        data: None,
                    }),
                    None,
                ),
                None,
            ),
            Op::Message(name) => (
                append(
                    EventBody::MessagePosted(MessagePosted {
                        name: name.clone(),
                        data: Some(json!({"x": 1})),
                    }),
                    None,
                ),
                None,
            ),
            Op::Complete => (
                append(
                    EventBody::JobCompleted(JobCompleted {
                        result: Some(json!(1)),
                    }),
                    None,
                ),
                None,
            ),
            Op::Fail => (
                append(
                    EventBody::JobFailed(JobFailed {
                        error: FailureInfo {
                            code: "E".into(),
                            message: "m".into(),
                        },
                    }),
                    None,
                ),
                None,
            ),
            Op::Cancel => (
                append(EventBody::JobCancelled(JobCancelled { reason: None }), None),
                None,
            ),
            Op::Keyed { key, progress } => {
                let key = format!("k{key}");
                (
                    append(
                        EventBody::ProgressReported(ProgressReported {
                            progress: *progress,
                            message: None,
                            data: None,
                        }),
                        Some(key.clone()),
                    ),
                    Some(key),
                )
            }
            Op::Connect { reconnect, behind } => (
                Command::Attach(Attach {
                    new_session_id: Uuid::new_v4(),
                    sub: "client".into(),
                    reconnect: *reconnect,
                    session_id: None,
                    max_watchers: 4,
                    client_last_seq: reconnect.then(|| (state.last_seq - behind).max(0)),
                    client_epoch: reconnect.then(|| EPOCH.to_owned()),
                    log_epoch: EPOCH.into(),
                    user_agent: None,
                    address: None,
                    node: behind.is_positive().then(|| format!("node-{behind}")),
                    transport: (*behind % 2 == 1).then(|| "sse".to_owned()),
                    own_session: false,
                    counted: None,
                }),
                None,
            ),
            Op::Disconnect { code } => {
                let Some((session_id, socket, _)) = live_session else {
                    continue;
                };
                (
                    Command::Detach {
                        session_id,
                        socket,
                        code: *code,
                        reason: "gone".into(),
                        acked_seq: Some(state.last_seq),
                        grace,
                    },
                    None,
                )
            }
            Op::ExpireGrace => {
                let Some((session_id, _, SessionPhase::Grace { until })) = live_session else {
                    continue;
                };
                now = now.max(until);
                (Command::ExpireGrace { session_id }, None)
            }
            Op::SocketError => (
                Command::Record {
                    session_id: live_session.map(|s| s.0),
                    body: EventBody::WsErrored(WsErrored {
                        message: "bad frame".into(),
                    }),
                },
                None,
            ),
            Op::Rejected => (
                Command::Record {
                    session_id: None,
                    body: EventBody::ConnectRejected(ConnectRejected {
                        status: 401,
                        code: "invalid_token".into(),
                        reconnect: true,
                        suppressed: 0,
                    }),
                },
                None,
            ),
        };
        let prior = key.and_then(|k| world.idempotency.get(&(job, k)).copied());
        let planned = match decide(&state, prior.as_ref(), &command, now) {
            Ok(Decision::Append(events)) => events,
            Ok(Decision::Attach { events, .. }) => events,
            _ => continue,
        };
        let idempotency_key = match &command {
            Command::AppendJobEvent {
                idempotency_key, ..
            } => idempotency_key.clone(),
            _ => None,
        };
        let mut state = state;
        for p in planned {
            let mut event = Event::new(job, p.session_id, now, p.body);
            event.idempotency_key.clone_from(&idempotency_key);
            let mut row = seal(&mut state, &mut event);
            row.position = rows.len() as i64 + 1;
            world.apply(&event);
            rows.push(row);
        }
        assert_eq!(
            world.jobs.get(&job),
            Some(&state),
            "the writer's staged state and the world agree"
        );
    }
    (rows, world)
}

fn append(body: EventBody, idempotency_key: Option<String>) -> Command {
    Command::AppendJobEvent {
        body,
        idempotency_key,
    }
}

fn fold(rows: &[EventRow], mut world: World) -> World {
    for row in rows {
        world.apply(&row.decode_stored().expect("a stored row decodes"));
    }
    world
}

fn same(a: &World, b: &World) -> Result<(), TestCaseError> {
    prop_assert_eq!(&a.jobs, &b.jobs);
    let mut ka: Vec<_> = a
        .idempotency
        .iter()
        .map(|(k, v)| (k.clone(), v.seq, v.fingerprint))
        .collect();
    let mut kb: Vec<_> = b
        .idempotency
        .iter()
        .map(|(k, v)| (k.clone(), v.seq, v.fingerprint))
        .collect();
    ka.sort();
    kb.sort();
    prop_assert_eq!(ka, kb);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn incremental_and_from_scratch_folds_agree(
        ops in prop::collection::vec((0usize..3, op()), 0..120),
        cut in 0usize..=1000,
    ) {
        let jobs = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        let (rows, incremental) = run(&ops, &jobs);

        // From scratch, out of the stored rows.
        let scratch = fold(&rows, World::default());
        same(&incremental, &scratch)?;

        // From a snapshot at any position, then the rest.
        let cut = cut.min(rows.len());
        let snapshot = fold(&rows[..cut], World::default());
        let resumed = fold(&rows[cut..], snapshot);
        same(&incremental, &resumed)?;

        // Every job's seqs are 1, 2, 3, … and each hash chains to the last.
        for job in jobs {
            let mine: Vec<&EventRow> = rows.iter().filter(|r| r.job_id == job.to_string()).collect();
            let mut prev = String::new();
            for (i, row) in mine.iter().enumerate() {
                prop_assert_eq!(row.seq, i as i64 + 1);
                prop_assert_eq!(&row.hash, &event_hash(&prev, row));
                prev.clone_from(&row.hash);
            }
        }
    }

    #[test]
    fn the_client_message_decoder_never_panics(text in any::<String>()) {
        let _ = parse_client_message(&text);
    }

    #[test]
    fn json_shaped_client_messages_never_panic(
        ty in prop::sample::select(vec!["ping", "ack", "pong", "", "ACK"]),
        seq in prop::option::of(any::<i64>()),
        extra in "[ -~]{0,20}",
    ) {
        let mut v = json!({"type": ty, "x": extra});
        if let Some(seq) = seq {
            v["seq"] = json!(seq);
        }
        let _ = parse_client_message(&v.to_string());
        let _ = parse_client_message(&format!("{{\"type\":\"ack\",\"seq\":{extra}}}"));
    }
}
