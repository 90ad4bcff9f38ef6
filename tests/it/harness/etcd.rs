//! etcd for the cluster tests: Debian's `etcd` binary started on free 127.0.0.1 ports
//! over a temporary data directory, killed by its pid when dropped; and a TCP proxy of
//! the test's own between a node and etcd, which a test cuts and heals (a partition).
//!
//! Without an `etcd` binary the cluster tests skip with a message, unless `CI=true`,
//! where a missing binary fails them (`.ci/run` installs `etcd-server`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use seatbroker::cluster::etcd::Etcd;
use tokio::net::{TcpListener, TcpStream};

/// How long etcd may take to answer after it was started.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The `etcd` binary, or `None` (and a message) when the tests should skip.
pub fn etcd_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the cluster tests need etcd: no `etcd` binary on PATH (apt-get install etcd-server; .ci/run does)"
        );
        eprintln!("skipped: no `etcd` binary on PATH (apt-get install etcd-server)");
    }
    found
}

/// A free port on 127.0.0.1 (bound and let go; etcd binds it right after).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// One etcd member on 127.0.0.1.
pub struct EtcdServer {
    binary: PathBuf,
    data_dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start(binary: PathBuf) -> EtcdServer {
        let mut etcd = EtcdServer {
            binary,
            data_dir: tempfile::tempdir().expect("etcd's data directory"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.restart().await;
        etcd
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// A client of this etcd.
    pub fn client(&self) -> Etcd {
        Etcd::connect(&[self.url()], Duration::from_secs(2)).expect("an etcd client")
    }

    /// Starts etcd again on the same ports and data directory; waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.data_dir.path().join("member"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let client = self.client();
        let until = Instant::now() + READY_DEADLINE;
        while client.get(b"/ready").await.is_err() {
            assert!(
                Instant::now() < until,
                "etcd did not answer within {READY_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, by its pid.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on 127.0.0.1 to one address: [`TcpProxy::cut`] closes every connection
/// and refuses new ones (they are accepted and dropped) until [`TcpProxy::heal`].
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on each cut: connections of an older generation close.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let task = tokio::spawn(accept(
            listener,
            target,
            Arc::clone(&cut),
            Arc::clone(&generation),
        ));
        TcpProxy {
            addr,
            cut,
            generation,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        let mut cuts = generation.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cuts.changed() => {}
            }
        });
    }
}
