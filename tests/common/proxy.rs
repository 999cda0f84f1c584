//! A loopback TCP proxy that breaks the network between a service and its store on demand:
//! added latency, a partition (bytes held, connections left open, as when packets vanish),
//! and a cut (every connection reset and new ones refused, as when the server restarts).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow, each chunk delayed by the latency.
    Up,
    /// Connections stay open but no byte passes until the link is up again.
    Partitioned,
    /// Open connections are reset; new ones are closed at once.
    Cut,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    latency: Arc<Mutex<Duration>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, _) = watch::channel(Link::Up);
        let proxy = Self { addr, link, latency: Arc::new(Mutex::new(Duration::ZERO)) };
        let accepting = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *accepting.link.borrow() == Link::Cut {
                    drop(inbound);
                    continue;
                }
                let _ = inbound.set_nodelay(true);
                let proxy = accepting.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        () = proxy.pump(ri, wo) => {}
                        () = proxy.pump(ro, wi) => {}
                    }
                });
            }
        });
        proxy
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }

    /// Copies one direction until either side closes or the link is cut (dropping both halves
    /// resets the connection).
    async fn pump(&self, mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
        let mut link = self.link.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if !until_up(&mut link).await {
                return;
            }
            let n = tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let latency = *self.latency.lock().unwrap();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            // Bytes read just before a partition wait for it to heal, as packets in flight would.
            if !until_up(&mut link).await {
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// Waits while the link is partitioned: true once it is up, false once it is cut.
async fn until_up(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        let state = *link.borrow_and_update();
        match state {
            Link::Up => return true,
            Link::Cut => return false,
            Link::Partitioned => {
                if link.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}
