//! A TCP proxy the test controls, between a node and its database: cutting
//! it closes every connection through it and refuses new ones (a partition,
//! or a database restart as its clients see it), healing it lets them
//! through again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    down: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        let (down, watch) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    drop(client); // refused: closed at once
                    continue;
                }
                tokio::spawn(forward(client, upstream, watch.clone()));
            }
        });
        Proxy { addr, down, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.down.send_replace(true);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.down.send_replace(false);
    }

    /// `url` (a PostgreSQL URL) pointed at this proxy instead of its host.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("a URL with user@host");
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{scheme_user}@{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut down: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = down.wait_for(|down| *down) => {}
    }
}

/// The host and port of a PostgreSQL URL (`postgres://user@host:port/db…`).
pub fn postgres_address(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
    let with_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    with_port
        .to_socket_addrs()
        .expect("a PostgreSQL address")
        .next()
        .expect("an address")
}
