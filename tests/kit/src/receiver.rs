//! A webhook endpoint on loopback: records every request it gets (headers,
//! body, arrival time) and answers each with the next status of its script,
//! then with its default.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;

use crate::socket::PATIENCE;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Bytes,
    pub json: Value,
    pub at: DateTime<Utc>,
    /// The status it was answered with.
    pub answered: u16,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
    default: Mutex<u16>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a free port that answers 204.
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// A receiver on `port` (0: a free one).
    pub async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the receiver binds");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.default.lock().unwrap() = 204;
        let (tx, count) = watch::channel(0);
        let app = axum::Router::new()
            .fallback(receive)
            .with_state((shared.clone(), Arc::new(tx)));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            shared,
            count,
            task,
        }
    }

    /// The URL to give `--webhook-url`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/rejoin", self.addr)
    }

    /// Answers every request after the script with `status`.
    pub fn answer(&self, status: u16) {
        *self.shared.default.lock().unwrap() = status;
    }

    /// Answers the next requests with these statuses, in order.
    pub fn script(&self, statuses: &[u16]) {
        self.shared
            .script
            .lock()
            .unwrap()
            .extend(statuses.iter().copied());
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits (at most [`PATIENCE`]) until `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut count = self.count.clone();
        tokio::time::timeout(PATIENCE, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{n} webhook requests did not arrive in time; got {:?}",
                    self.requests()
                )
            })
            .expect("the receiver runs");
        self.requests()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ReceiverState = (Arc<Shared>, Arc<watch::Sender<usize>>);

async fn receive(
    State((shared, count)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let answered = {
        let next = shared.script.lock().unwrap().pop_front();
        next.unwrap_or(*shared.default.lock().unwrap())
    };
    let received = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body,
        at: Utc::now(),
        answered,
    };
    let n = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(received);
        requests.len()
    };
    count.send_replace(n);
    StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
