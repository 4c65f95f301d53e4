//! HTTPS on the API and admin listeners from a certificate and key file: clients that trust
//! the test CA (curl, openssl) get answers over HTTP/1.1 and HTTP/2; replaced files are
//! picked up without a restart (by their change, and by SIGHUP), connections already open
//! keep working, and a broken replacement leaves the certificate in use.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::helpers::*;

/// `curl` through HTTPS trusting `ca`; the HTTP version and status it saw, and the body.
fn curl(ca: &str, version_flag: &str, url: &str, token: Option<&str>) -> (String, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "--cacert", ca, version_flag]);
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
        command.args(["-H", &format!("x-tenantid: {TENANT}")]);
    }
    let output = command
        .args(["-w", "\n%{http_version} %{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {url}: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, seen) = text.rsplit_once('\n').unwrap();
    (seen.to_owned(), body.to_owned())
}

/// The subject of the certificate a new TLS handshake with `address` presents.
fn presented_subject(address: &str, ca: &str) -> String {
    let handshake = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            address,
            "-CAfile",
            ca,
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    subject
        .stdin
        .take()
        .unwrap()
        .write_all(&handshake.stdout)
        .unwrap();
    let output = subject.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn wait_for_subject(address: &str, ca: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let subject = presented_subject(address, ca);
        if subject.contains(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still presenting {subject:?}, not {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Replaces the served pair with `name`'s files, as a secret update does (new file, rename);
/// with `times`, the new files carry these modification times (key, certificate).
fn install(pki: &Pki, name: &str, dir: &Path, times: Option<[SystemTime; 2]>) {
    for (i, (from, to)) in [("key", "tls.key"), ("pem", "tls.pem")]
        .into_iter()
        .enumerate()
    {
        let staged = dir.join(format!("{to}.new"));
        std::fs::copy(pki.path(&format!("{name}.{from}")), &staged).unwrap();
        if let Some(times) = times {
            let file = std::fs::File::options().write(true).open(&staged).unwrap();
            file.set_modified(times[i]).unwrap();
        }
        std::fs::rename(&staged, dir.join(to)).unwrap();
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[tokio::test]
async fn https_on_both_listeners_with_certificates_replaced_without_a_restart() {
    let pki = Pki::make();
    pki.leaf(
        "renewed",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    let ca = pki.path("ca.pem");
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    install(&pki, "server", dir.path(), None);
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
    let admin = ServeProcess::admin_env();
    let log = dir.path().join("serve.log");
    let serve = ServeProcess::start_logging(
        &nats.url(),
        &dir.path().join("stats.db"),
        &[
            ("JOBSTATS_TLS_CERT_FILE", cert.to_str().unwrap()),
            ("JOBSTATS_TLS_KEY_FILE", key.to_str().unwrap()),
            ("JOBSTATS_ADMIN_LISTEN", &admin),
        ],
        std::fs::File::create(&log).unwrap(),
    );
    let api = serve.address.to_string();
    let https = |path: &str| format!("https://{api}{path}");

    // HTTP/1.1 and HTTP/2 (by ALPN) on the API listener, with a real request.
    nats.ensure_stream().await;
    let publisher = nats.publisher().await;
    let sequence = publish_all(
        &publisher,
        &execution_events("secure", "r1", chrono::Utc::now(), 50, true),
    )
    .await;
    let (seen, body) = curl(&ca, "--http1.1", &https("/healthz"), None);
    assert_eq!(seen, "1.1 200", "{body}");
    let token = admin_token();
    let stats = https(&format!(
        "/api/v1/admin/jobs/secure/stats?minSequence={sequence}"
    ));
    // The projector may still be applying: asked again until it has (503 meanwhile).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (seen, body) = loop {
        let (seen, body) = curl(&ca, "--http2", &stats, Some(&token));
        if seen != "2 503" || Instant::now() > deadline {
            break (seen, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seen, "2 200", "{body}");
    assert!(body.contains("\"completed\":1"), "{body}");
    // The admin listener speaks HTTPS too.
    let (seen, body) = curl(&ca, "--http2", &format!("https://{admin}/readyz"), None);
    assert_eq!(seen, "2 200", "{body}");
    // Cleartext to an HTTPS port gets no answer.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{api}/healthz")])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "cleartext was answered");

    // A connection opened before the certificate changes.
    let mut open = Command::new("openssl")
        .args([
            "s_client", "-connect", &api, "-CAfile", &ca, "-quiet", "-alpn", "http/1.1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let replies = lines_of(&mut open);
    let mut requests = open.stdin.take().unwrap();
    let mut ask = |replies: &std::sync::mpsc::Receiver<String>| {
        requests
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .unwrap();
        requests.flush().unwrap();
        // The status line (a body without a newline may run into it).
        let status = loop {
            let line = replies
                .recv_timeout(Duration::from_secs(10))
                .expect("an answer");
            if let Some(at) = line.find("HTTP/1.1 ") {
                break line[at..].to_owned();
            }
        };
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    };
    ask(&replies);
    assert!(presented_subject(&api, &ca).contains("jobstats test server"));

    // Replaced files: new handshakes get the new certificate, on both listeners.
    install(&pki, "renewed", dir.path(), None);
    wait_for_subject(&api, &ca, "jobstats test renewed");
    wait_for_subject(&admin, &ca, "jobstats test renewed");
    // The connection from before still answers.
    ask(&replies);

    // SIGHUP re-reads even when the files' times say nothing changed (the check by time
    // cannot see these new files).
    let times = [modified(&key), modified(&cert)];
    install(&pki, "server", dir.path(), Some(times));
    serve.signal("HUP");
    wait_for_subject(&api, &ca, "jobstats test server");

    // A broken replacement is refused (and said so); the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("TLS certificate not reloaded")
    {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (seen, _) = curl(&ca, "--http1.1", &https("/healthz"), None);
    assert_eq!(seen, "1.1 200");
    assert!(presented_subject(&api, &ca).contains("jobstats test server"));
    let _ = open.kill();
}

#[tokio::test]
async fn https_files_must_come_as_a_pair_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make();
    let run = |env: &[(&str, &str)]| {
        let output = Command::new(BIN)
            .arg("serve")
            .env("JOBSTATS_DB_PATH", dir.path().join("stats.db"))
            .env("JOBSTATS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("JOBSTATS_JWT_HS256_SECRET", SECRET)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let cert = pki.path("server.pem");
    let wrong_key = pki.path("client.key");
    let text = run(&[("JOBSTATS_TLS_CERT_FILE", &cert)]);
    assert!(text.contains("set both or neither"), "{text}");
    let text = run(&[
        ("JOBSTATS_TLS_CERT_FILE", &cert),
        ("JOBSTATS_TLS_KEY_FILE", &wrong_key),
    ]);
    assert!(
        text.contains("JOBSTATS_TLS_KEY_FILE") && text.contains("does not go with the certificate"),
        "{text}"
    );
}
