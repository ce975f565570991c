//! A TCP proxy on loopback that a test can cut and restore: a database outage, or a network
//! partition between two processes, without touching anything else on the machine.
//!
//! Cut, it drops every connection it carries and accepts new ones only to close them at once (a
//! refused connection, as far as the client can tell). Frozen, it keeps every connection open and
//! carries nothing: a peer that went silent, the way a partition looks (no reset, no answer).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Carry,
    Cut,
    Freeze,
}

/// A running proxy; stops (dropping its connections) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    /// A proxy on 127.0.0.1 and a free port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Carry);
        let mode = Arc::new(mode);
        let stop = CancellationToken::new();
        let (m, token) = (mode.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    () = token.cancelled() => return,
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                };
                if *m.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                tokio::spawn(carry(client, target, m.subscribe(), token.child_token()));
            }
        });
        Self { addr, mode, stop }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Carries nothing, keeping connections open, until [`Proxy::restore`].
    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Freeze);
    }

    /// Carries traffic again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Carry);
    }
}

async fn carry(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>, stop: CancellationToken) {
    let Ok(server) = TcpStream::connect(target).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => return,
            Mode::Freeze => tokio::select! {
                () = stop.cancelled() => return,
                r = mode.changed() => if r.is_err() { return },
            },
            Mode::Carry => tokio::select! {
                () = stop.cancelled() => return,
                r = mode.changed() => if r.is_err() { return },
                n = cr.read(&mut up) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if sw.write_all(&up[..n]).await.is_err() { return },
                },
                n = sr.read(&mut down) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if cw.write_all(&down[..n]).await.is_err() { return },
                },
            },
        }
    }
}
