//! etcd for the cluster tests: Debian's `etcd` binary started on free 127.0.0.1 ports
//! over a temporary data directory (plaintext, or TLS with the test certificates,
//! requiring client certificates or not; its authentication turned on through the
//! API), killed by its pid when dropped; and a TCP proxy of the test's own between a
//! node and etcd, which a test cuts and heals (a partition) or slows down (every chunk
//! delayed, each way).
//!
//! Without an `etcd` binary the cluster tests skip with a message, unless `CI=true`,
//! where a missing binary fails them (`.ci/run` installs `etcd-server`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seatbroker::cluster::etcd::{Etcd, EtcdAccess, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::certs::TestCerts;

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

/// etcd over TLS with the test certificates (its certificate names 127.0.0.1).
pub struct EtcdTls<'a> {
    pub certs: &'a TestCerts,
    /// `--client-cert-auth`: clients must present a certificate of the test CA.
    pub client_cert_auth: bool,
}

/// One etcd member on 127.0.0.1.
pub struct EtcdServer {
    binary: PathBuf,
    data_dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// etcd's flags for TLS, and the harness's client configuration for it.
    tls: Option<(Vec<String>, ClientTlsConfig)>,
    /// Further flags of etcd.
    args: Vec<String>,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start(binary: PathBuf) -> EtcdServer {
        EtcdServer::start_with(binary, None, &[]).await
    }

    /// Starts etcd, over TLS when `tls` is given, with further `args`; waits until it
    /// answers.
    pub async fn start_with(
        binary: PathBuf,
        tls: Option<EtcdTls<'_>>,
        args: &[&str],
    ) -> EtcdServer {
        let tls = tls.map(
            |EtcdTls {
                 certs,
                 client_cert_auth,
             }| {
                let path = |path: &PathBuf| path.to_str().expect("a UTF-8 path").to_owned();
                let mut flags = vec![
                    "--cert-file".to_owned(),
                    path(&certs.server_cert),
                    "--key-file".to_owned(),
                    path(&certs.server_key),
                ];
                let read = |path: &PathBuf| std::fs::read(path).expect("a PEM file");
                let mut client =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&certs.ca)));
                if client_cert_auth {
                    flags.extend([
                        "--client-cert-auth".to_owned(),
                        "--trusted-ca-file".to_owned(),
                        path(&certs.ca),
                    ]);
                    client = client.identity(Identity::from_pem(
                        read(&certs.client_cert),
                        read(&certs.client_key),
                    ));
                }
                (flags, client)
            },
        );
        let mut etcd = EtcdServer {
            binary,
            data_dir: tempfile::tempdir().expect("etcd's data directory"),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
        };
        etcd.restart().await;
        etcd
    }

    /// `http://127.0.0.1:<port>` (`https://` over TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// How the harness reaches this etcd (TLS, with the client certificate when etcd
    /// requires one).
    pub fn access(&self) -> EtcdAccess {
        EtcdAccess {
            tls: self.tls.as_ref().map(|(_, client)| client.clone()),
            credentials: None,
        }
    }

    /// A client of this etcd.
    pub fn client(&self) -> Etcd {
        Etcd::connect(&[self.url()], Duration::from_secs(2), self.access()).expect("an etcd client")
    }

    /// Turns etcd's authentication on with a `root` user of `password` (through the
    /// API, as `etcdctl user add root; auth enable` does). Calls then need a token.
    pub async fn enable_auth(&self, password: &str) {
        let channel = tonic::transport::Endpoint::from_shared(self.url())
            .expect("a URL")
            .connect()
            .await
            .expect("connect to etcd");
        let mut auth = pb::auth_client::AuthClient::new(channel);
        auth.user_add(pb::AuthUserAddRequest {
            name: "root".into(),
            password: password.into(),
        })
        .await
        .expect("add the root user");
        auth.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .expect("grant root the root role");
        auth.auth_enable(pb::AuthEnableRequest {})
            .await
            .expect("enable authentication");
    }

    /// Starts etcd again on the same ports and data directory; waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let tls_flags = self
            .tls
            .as_ref()
            .map(|(flags, _)| flags.clone())
            .unwrap_or_default();
        let child = Command::new(&self.binary)
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.data_dir.path().join("member"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(tls_flags)
            .args(&self.args)
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

    /// Stops etcd (SIGSTOP) for `duration`, then lets it go on (SIGCONT): a stalled
    /// disk or a paused machine, as its clients see it.
    pub async fn stall(&self, duration: Duration) {
        let pid = self.child.as_ref().expect("etcd runs").id() as libc::pid_t;
        // SAFETY: plain system calls signalling our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP etcd");
        tokio::time::sleep(duration).await;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT etcd");
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
/// and refuses new ones (they are accepted and dropped) until [`TcpProxy::heal`];
/// [`TcpProxy::delay`] holds every chunk read, each way, that long before it is
/// written (a slow network: latency, not a bandwidth cap).
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Milliseconds each chunk is held.
    delay_ms: Arc<AtomicU64>,
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
        let delay_ms = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let task = tokio::spawn(accept(
            listener,
            target,
            Arc::clone(&cut),
            Arc::clone(&delay_ms),
            Arc::clone(&generation),
        ));
        TcpProxy {
            addr,
            cut,
            delay_ms,
            generation,
            task,
        }
    }

    /// Holds every chunk `delay` before writing it on, each way (zero: no delay).
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
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
    delay_ms: Arc<AtomicU64>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        let mut cuts = generation.subscribe();
        let delay_ms = Arc::clone(&delay_ms);
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (from_client, to_client) = inbound.into_split();
            let (from_target, to_target) = outbound.into_split();
            let both_ways = async {
                tokio::join!(
                    pump(from_client, to_target, &delay_ms),
                    pump(from_target, to_client, &delay_ms)
                )
            };
            tokio::select! {
                _ = both_ways => {}
                _ = cuts.changed() => {}
            }
        });
    }
}

/// Chunks read and not yet written, per direction of a connection.
const CHUNKS_HELD_MAX: usize = 1024;

/// Copies `from` to `to`, each chunk written `delay_ms` after it was read: a reader
/// and a writer joined by a queue of timestamped chunks, so chunks keep their spacing
/// and a slow link adds latency, not a bandwidth cap.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: &AtomicU64,
) {
    let (chunks, mut held) = tokio::sync::mpsc::channel(CHUNKS_HELD_MAX);
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let due = tokio::time::Instant::now()
                + Duration::from_millis(delay_ms.load(Ordering::SeqCst));
            if chunks.send((due, buffer[..read].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = held.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
