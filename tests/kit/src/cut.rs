//! A proxy for one client connection that passes the server's first `k`
//! bytes and then cuts the connection, the way a network switch, a tunnel or
//! a dying radio does: at an exact byte offset, chosen by the test.
//!
//! Bytes from the client pass untouched. Bytes from the server are counted:
//! when the server has sent more than `k`, the client gets exactly the first
//! `k` and the connection is cut, by a [`Cut::Reset`] (both sides see a TCP
//! reset at once) or a [`Cut::Silent`] drop (the client's side is reset, the
//! server's stays open and hears nothing more, so the server only notices by
//! its heartbeat). Everything forwarded is kept as the connection's
//! transcript, so a run without a cut learns how long a script's transcript
//! is and where its messages end.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// A TCP reset to both the client and the server.
    Reset,
    /// The client's side is reset; the server's side stays open and silent
    /// (nothing it sends arrives, nothing comes back) until the proxy is
    /// dropped.
    Silent,
}

/// What happened on the proxied connection so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the server's passed to the client.
    pub forwarded: u64,
    /// The connection was cut.
    pub cut: bool,
    /// The connection is over (cut, or closed by either side).
    pub over: bool,
}

pub struct CutProxy {
    addr: SocketAddr,
    progress: watch::Receiver<Progress>,
    transcript: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// A proxy on a loopback port to `upstream` for the first connection it
    /// accepts, cut after the server's first `k` bytes (`u64::MAX`: never).
    pub async fn start(upstream: SocketAddr, k: u64, how: Cut) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        let (tx, progress) = watch::channel(Progress::default());
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let kept = transcript.clone();
        let task = tokio::spawn(async move {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            drop(listener); // one connection; any other is refused
            let Ok(server) = TcpStream::connect(upstream).await else {
                tx.send_modify(|p| p.over = true);
                return;
            };
            relay(client, server, k, how, &tx, &kept).await;
        });
        CutProxy {
            addr,
            progress,
            transcript,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What happened so far.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Changes to [`Progress`], to wait on.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Every byte of the server's that reached the client.
    pub fn transcript(&self) -> Vec<u8> {
        self.transcript.lock().unwrap().clone()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        // Ends a silent connection: its server side is closed at last.
        self.task.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    k: u64,
    how: Cut,
    progress: &watch::Sender<Progress>,
    transcript: &Mutex<Vec<u8>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let cut = {
        // Borrowed halves: dropping them shuts nothing down, so a cut can
        // still reset.
        let (mut from_client, mut to_client) = client.split();
        let (mut from_server, mut to_server) = server.split();
        let upstream = async {
            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            // The client finished sending: so does the proxy, and the other
            // direction goes on.
            let _ = to_server.shutdown().await;
            std::future::pending::<()>().await
        };
        let downstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            let mut forwarded = 0u64;
            loop {
                let n = match from_server.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                let room = k.saturating_sub(forwarded);
                let pass = (n as u64).min(room) as usize;
                if pass > 0 {
                    if to_client.write_all(&buf[..pass]).await.is_err() {
                        return false;
                    }
                    forwarded += pass as u64;
                    transcript.lock().unwrap().extend_from_slice(&buf[..pass]);
                    progress.send_modify(|p| p.forwarded = forwarded);
                }
                if pass < n {
                    return true;
                }
            }
        };
        tokio::select! {
            _ = upstream => unreachable!("the upstream copy never ends by itself"),
            cut = downstream => cut,
        }
    };
    // A reset, not a FIN: the kernel sends RST when a socket with a zero
    // linger is closed.
    reset_on_close(&client);
    drop(client);
    match (cut, how) {
        (true, Cut::Silent) => {
            progress.send_modify(|p| {
                p.cut = true;
                p.over = true;
            });
            // The server's side stays open and unread until the proxy goes.
            let _keep = server;
            std::future::pending::<()>().await
        }
        (cut, _) => {
            if cut {
                reset_on_close(&server);
            }
            drop(server);
            progress.send_modify(|p| {
                p.cut = cut;
                p.over = true;
            });
        }
    }
}

/// A zero linger: closing the socket sends RST at once. (tokio deprecates
/// `set_linger` because a non-zero linger blocks the closing thread; a zero
/// one never waits.)
#[allow(deprecated)]
pub(crate) fn reset_on_close(socket: &TcpStream) {
    let _ = socket.set_linger(Some(Duration::ZERO));
}
