//! Every way in works on a fresh machine: the compose file's services start with exactly the
//! environment compose would give them, and the demo gets its own NATS without root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compose's interpolation with none of the variables set: `${VAR:-default}` and
/// `${VAR-default}` give the default, `${VAR}` and `$VAR` nothing, `$$` a dollar.
fn interpolate_unset(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("unclosed ${ in the compose file");
            let expression = &braced[..end];
            if let Some((_, default)) = expression.split_once(":-") {
                out.push_str(default);
            } else if let Some((_, default)) = expression.split_once('-') {
                out.push_str(default);
            }
            rest = &braced[end + 1..];
        } else {
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            rest = &after[name_len..];
        }
    }
    out.push_str(rest);
    out
}

/// The runtime stage's `ENV` (the last stage of the Dockerfile), in `KEY=value` form.
fn dockerfile_env(text: &str) -> BTreeMap<String, String> {
    let last_stage = text.rsplit("\nFROM ").next().unwrap_or(text);
    let joined = last_stage.replace("\\\n", " ");
    let mut env = BTreeMap::new();
    for line in joined.lines().map(str::trim) {
        if let Some(pairs) = line.strip_prefix("ENV ") {
            for pair in pairs.split_whitespace() {
                let (key, value) = pair.split_once('=').expect("ENV KEY=value");
                env.insert(key.to_owned(), value.trim_matches('"').to_owned());
            }
        }
    }
    env
}

fn compose() -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&interpolate_unset(&text)).unwrap()
}

/// A service's command and environment as compose resolves them (image `ENV` under the
/// service's `environment`), with only what exists inside containers alone replaced: the NATS
/// host, the data volume, the published port.
fn resolve(
    service: &str,
    nats_url: &str,
    data: &Path,
    port: u16,
) -> (Vec<String>, BTreeMap<String, String>) {
    let compose = compose();
    let spec = &compose["services"][service];
    assert!(
        spec.is_mapping(),
        "no service {service:?} in docker-compose.yml"
    );
    let mut env = dockerfile_env(&std::fs::read_to_string(root().join("Dockerfile")).unwrap());
    for (key, value) in spec["environment"].as_mapping().into_iter().flatten() {
        let value = match value {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            other => panic!("{service}: environment value {other:?}"),
        };
        env.insert(key.as_str().unwrap().to_owned(), value);
    }
    for (key, value) in env.iter_mut() {
        match key.as_str() {
            "JOBSTATS_NATS_URL" => {
                assert_eq!(value, "nats://nats:4222", "{service}: {key}");
                *value = nats_url.to_owned();
            }
            "JOBSTATS_DB_PATH" => {
                let file = value
                    .strip_prefix("/data/")
                    .expect("the database on the volume");
                *value = data.join(file).to_string_lossy().into_owned();
            }
            "JOBSTATS_LISTEN" => {
                assert_eq!(value, "0.0.0.0:8080", "{service}: {key}");
                *value = format!("127.0.0.1:{port}");
            }
            "JOBSTATS_DEMO_API_URL" => {
                assert_eq!(value, "http://localhost:8080", "{service}: {key}");
                *value = format!("http://127.0.0.1:{port}");
            }
            _ => {}
        }
    }
    let command = spec["command"]
        .as_sequence()
        .map(|c| c.iter().map(|a| a.as_str().unwrap().to_owned()).collect())
        .unwrap_or_else(|| vec!["serve".to_owned()]);
    (command, env)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
}

#[test]
fn the_compose_services_start_with_exactly_the_environment_compose_gives_them() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();

    let (command, env) = resolve("jobstats", &nats.url(), data.path(), port);
    let log = data.path().join("serve.log");
    let serve = Command::new(BIN)
        .args(&command)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut serve = scopeguard(serve);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = serve.0.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "`jobstats {}` with the compose environment exited ({status}):\n{}",
                command.join(" "),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let healthy = Command::new("curl")
            .args(["-fsS", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/healthz"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if healthy {
            break;
        }
        assert!(Instant::now() < deadline, "no /healthz within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The demo profile's runners: same secret and tenant, so what they print works as is.
    let (command, env) = resolve("demo", &nats.url(), data.path(), port);
    let mut runners = Command::new(BIN)
        .args(&command)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut runners);
    let mut runners = scopeguard(runners);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut curls = Vec::new();
    let mut token_line = false;
    while curls.len() < 2 {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo runners printed no curl commands (is the secret shared?)");
        token_line |= line.starts_with("TOKEN=");
        if line.starts_with("curl ") {
            curls.push(line);
        }
    }
    assert!(token_line, "a TOKEN= line for `docker compose logs demo`");
    let stats = curl_until_ok(&curls[0], Duration::from_secs(30));
    assert!(
        stats["data"]["queue"]["completed"].as_i64().unwrap() > 0,
        "{stats}"
    );
    let trouble = curl_until_ok(&curls[1], Duration::from_secs(30));
    assert!(
        !trouble["data"]["jobs"].as_array().unwrap().is_empty(),
        "{trouble}"
    );

    stop(runners.0.take().unwrap());
    stop(serve.0.take().unwrap());

    // Where a compose implementation is installed, it must accept the file too.
    for compose in [&["docker", "compose"][..], &["docker-compose"][..]] {
        let installed = Command::new(compose[0])
            .args(&compose[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            continue;
        }
        let output = Command::new(compose[0])
            .args(&compose[1..])
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{compose:?} config: {stderr}");
    }
}

/// Kills a child left running when a test fails.
struct Guard(Option<Child>);

fn scopeguard(child: Child) -> Guard {
    Guard(Some(child))
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The interpreter behind `python3` (a pyenv shim is a shell script that needs PATH).
fn real_python() -> PathBuf {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 on PATH");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Whether this machine lets the test hide Debian's nats-server in a mount namespace.
fn can_hide_system_nats() -> bool {
    Command::new("/usr/bin/unshare")
        .args([
            "-m",
            "/bin/sh",
            "-c",
            "/usr/bin/mount --bind /dev/null /dev/null",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_demo_installs_its_own_nats_without_root_and_serves_real_stats() {
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // What a fresh Debian user has: no nats-server anywhere they can see, python3, no root.
    // As root the test becomes `nobody` and hides Debian's nats-server, when the machine
    // allows it; the jobstats binary is copied where that user can run it.
    let as_nobody = running_as_root()
        && Path::new("/usr/bin/setpriv").exists()
        && Path::new("/usr/bin/python3").exists()
        && can_hide_system_nats();
    const TEST: &str = "the_demo_installs_its_own_nats_without_root_and_serves_real_stats";
    if !as_nobody {
        // As this user the demo may find a nats-server it did not install, or install one
        // where a fresh user could not: the fresh-user part is what is skipped.
        skip(
            TEST,
            "running as a fresh user (nobody, no system nats-server in sight) needs root, \
             /usr/bin/setpriv, /usr/bin/python3 and mount namespaces",
        );
    }
    let python = if as_nobody {
        PathBuf::from("/usr/bin/python3")
    } else {
        real_python()
    };
    std::os::unix::fs::symlink(&python, bin.join("python3")).unwrap();
    let jobstats = home.path().join("jobstats");
    std::fs::copy(BIN, &jobstats).unwrap();
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    if as_nobody {
        for entry in [home.path(), &bin, &work, &jobstats] {
            std::os::unix::fs::chown(entry, Some(65534), Some(65534)).unwrap();
        }
    }
    let nats_port = free_port();
    let listen_port = free_port();
    let mut command = if as_nobody {
        let mut command = Command::new("/usr/bin/unshare");
        command.args([
            "-m",
            "/bin/sh",
            "-c",
            // Debian's nats-server (and any other system-wide one) is out of reach.
            "for f in /usr/sbin/nats-server /usr/bin/nats-server /usr/local/bin/nats-server; do \
               [ -e \"$f\" ] && /usr/bin/mount --bind /dev/null \"$f\"; done; \
             exec /usr/bin/setpriv --reuid 65534 --regid 65534 --clear-groups \"$@\"",
            "sh",
        ]);
        command.arg(&jobstats);
        command
    } else {
        Command::new(&jobstats)
    };
    // The machine's way to the package registries (a proxy, a CA, pip's settings) is the
    // user's too; nothing else of this environment is.
    let registry_settings: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| {
            key.starts_with("PIP_")
                || key.to_ascii_lowercase().ends_with("_proxy")
                || key == "SSL_CERT_FILE"
        })
        .collect();
    let mut demo = command
        .arg("demo")
        .current_dir(&work)
        .env_clear()
        .envs(registry_settings)
        .env("PATH", &bin)
        .env("HOME", home.path())
        .env("JOBSTATS_NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("JOBSTATS_LISTEN", format!("127.0.0.1:{listen_port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(home.path().join("demo.err")).unwrap())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut demo);
    let demo = scopeguard(demo);
    let stderr = || std::fs::read_to_string(home.path().join("demo.err")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(240);
    let curl = loop {
        let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            panic!("the demo printed no curl command:\n{}", stderr());
        };
        if line.starts_with("curl ") {
            break line;
        }
    };
    let stats = curl_until_ok(&curl, Duration::from_secs(30));
    assert!(
        stats["data"]["queue"]["completed"].as_i64().unwrap() > 0,
        "{stats}"
    );

    // Unless the demo could see a system-wide nats-server, it must have installed its own.
    let system_nats_visible = !as_nobody && Path::new("/usr/sbin/nats-server").exists();
    if system_nats_visible {
        skip(
            TEST,
            "the install check: the demo could see /usr/sbin/nats-server, so it need not install one",
        );
    } else {
        let installed = work.join("data/nats-server-venv/bin/nats-server");
        assert!(
            installed.is_file(),
            "the demo installed nats-server into its own venv:\n{}",
            stderr()
        );
        let running = Command::new("sh")
            .arg("-c")
            .arg(format!("pgrep -af '[n]ats-server.*-p {nats_port}'"))
            .output()
            .unwrap();
        let running = String::from_utf8_lossy(&running.stdout).to_string();
        assert!(
            running.contains("nats-server-venv/bin/nats-server"),
            "the demo runs the nats-server it installed: {running:?}"
        );
    }
    eprintln!("demo as nobody: {as_nobody}; it said:\n{}", stderr());
    stop(demo.into_child());
}

impl Guard {
    fn into_child(mut self) -> Child {
        self.0.take().unwrap()
    }
}
