//! A TCP proxy a test can cut, as crates.io's tests do for their database:
//! nodes reach PostgreSQL or Redis through it, and `cut` makes the service
//! disappear (open connections closed, new ones refused) until `restore`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpCut {
    pub addr: SocketAddr,
    target: SocketAddr,
    /// The accept loop and every connection it started, aborted by `cut`.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpCut {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)));
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            target,
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Accepts again on the same address.
    pub async fn restore(&self) {
        // The aborted accept loop drops its listener on its next poll.
        for _ in 0..100 {
            if let Ok(listener) = try_listen(self.addr) {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("cannot listen on {} again", self.addr);
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let target = self.target;
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        self.cut();
    }
}

fn listen(addr: SocketAddr) -> TcpListener {
    try_listen(addr).unwrap()
}

fn try_listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
