//! A real `nats-server -js` for the farm tests and `farm_load`: started on 127.0.0.1 at a free
//! port with a fresh store directory, restartable on the same port and store, killed on drop.
//! Where the binary is missing, [`NatsServer::start`] panics with the one install line: the
//! farm tests fail, they never pass silently.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The line that installs the broker (Debian 12: nats-server 2.9).
pub const INSTALL_LINE: &str = "apt-get install -y nats-server";

fn nats_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]);
    for dir in candidates {
        let path = dir.join("nats-server");
        if path.is_file() {
            return path;
        }
    }
    panic!("nats-server is not installed; the farm tests need it: {INSTALL_LINE}");
}

/// One broker process with JetStream on.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store: PathBuf,
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

impl NatsServer {
    /// Starts `nats-server -js -a 127.0.0.1 -p <free port> -sd <fresh dir>` and waits until it
    /// accepts connections.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        let n = SERVERS.fetch_add(1, Ordering::SeqCst);
        let store = std::env::temp_dir().join(format!("bd-farm-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        std::fs::create_dir_all(&store).expect("a temp dir for the JetStream store");
        let mut server = Self {
            child: None,
            port,
            store,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new(nats_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting nats-server: {e} ({INSTALL_LINE})"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker (no shutdown of any kind: what it had not written is gone) and
    /// starts it again on the same port and store.
    ///
    /// nats-server 2.9 then brings back work-queue messages acknowledged shortly before the
    /// kill (it writes removals lazily); the workers' sweep (`farm::serve`) deletes them.
    pub fn kill9_restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Stops the broker (SIGTERM: it shuts down cleanly, flushing its stores) and starts it
    /// again on the same port and store.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.launch();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A worker child process (killed on drop).
pub struct WorkerProcess {
    child: Option<Child>,
    pub name: String,
}

impl WorkerProcess {
    /// Starts `binary` (the `farm_fast_worker` test binary, or anything taking its flags) with
    /// `--nats url --name name` and `extra` flags.
    pub fn spawn(binary: &str, url: &str, name: &str, extra: &[&str]) -> Self {
        let child = Command::new(binary)
            .args(["--nats", url, "--name", name])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting worker {binary}: {e}"));
        Self {
            child: Some(child),
            name: name.to_string(),
        }
    }

    /// SIGKILL (no clean-up of any kind in the worker).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
