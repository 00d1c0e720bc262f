//! The server as a value: [`Application::build`] opens the log, rebuilds state
//! and binds the listener (so the port is known before anything runs);
//! [`Application::run`] serves until the given shutdown future resolves, then
//! stops in order: no new requests, in-flight requests answered, the writer
//! drained, the database closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Authority;
use crate::clock::{Clock, SystemClock};
use crate::config::ServeArgs;
use crate::engine::{Engine, EngineSettings};
use crate::http::{self, AppState, HttpSettings};
use crate::log;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    writer: JoinHandle<()>,
    writer_stop: CancellationToken,
}

impl Application {
    /// Builds the server on the system clock.
    pub async fn build(args: ServeArgs) -> anyhow::Result<Self> {
        Self::build_with_clock(args, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(args: ServeArgs, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let url = &args.database.database_url;
        let store = log::open(url).await?;
        let secret_dir = log::sqlite::database_path(url)
            .map(|p| p.parent().map(|d| d.to_path_buf()).unwrap_or_default());
        let auth = Authority::from_args(&args.jwt, secret_dir.as_deref())?;
        let writer_stop = CancellationToken::new();
        let (engine, writer) =
            Engine::start(store, clock, EngineSettings::default(), writer_stop.clone()).await?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let state = AppState {
            engine,
            auth: Arc::new(auth),
            settings: Arc::new(HttpSettings {
                public_url: args.public_url.clone(),
                max_body_bytes: args.max_body_bytes,
                client_token_ttl_secs: args.client_token_ttl_secs,
                max_client_token_ttl_secs: args.max_client_token_ttl_secs,
            }),
        };
        Ok(Application {
            listener,
            state,
            writer,
            writer_stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Serves until `shutdown` resolves, then stops gracefully.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            writer,
            writer_stop,
        } = self;
        let store = state.engine.store().clone();
        let app = http::router(state);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
        tracing::info!("stopped accepting; draining the log writer");
        writer_stop.cancel();
        writer.await.context("the log writer panicked")?;
        store.close().await;
        tracing::info!("log flushed; bye");
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
