//! The stats endpoint: the API document's shape, every row of CONTRACT §3, every auth rule.

use chrono::{TimeZone, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::*;

struct Fixture {
    _nats: NatsServer,
    _dir: tempfile::TempDir,
    app: App,
}

/// A server holding one job, `tokenExpiry`, in TENANT.
async fn fixture() -> Fixture {
    fixture_with(jwt_options()).await
}

async fn fixture_with(jwt: jobstats::api::auth::AuthSettings) -> Fixture {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn_with(&nats.url(), &dir.path().join("stats.db"), jwt, false).await;
    let publisher = nats.publisher().await;
    let t0 = Utc.with_ymd_and_hms(2025, 7, 10, 6, 0, 0).unwrap();
    let mut events = execution_events("tokenExpiry", "exec-002", t0, 42_000, true);
    events.extend(execution_events(
        "tokenExpiry",
        "exec-001",
        t0 + chrono::Duration::hours(6),
        38_000,
        true,
    ));
    events.push(
        jobstats::publish::EventBuilder::new(TENANT, "tokenExpiry")
            .unwrap()
            .at(t0)
            .scheduled(Some("0 */6 * * *"))
            .unwrap(),
    );
    let head = publish_all(&publisher, &events).await;
    app.wait_applied(head).await;
    Fixture {
        _nats: nats,
        _dir: dir,
        app,
    }
}

async fn get(
    app: &App,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = app.http.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body for {path}: {text}"));
    (status, body, headers)
}

async fn stats_status(app: &App, job: &str, token: &str, tenant: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, body, headers) = get(
        app,
        &format!("/api/v1/admin/jobs/{job}/stats"),
        &[
            ("authorization", &auth),
            ("x-tenantid", tenant),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_error_envelope_if_error(status, &body);
    if status == 401 {
        assert_eq!(
            headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
    }
    (status, body)
}

fn assert_error_envelope_if_error(status: u16, body: &Value) {
    if status >= 400 {
        assert_eq!(body["success"], false, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(body["error"]["code"].is_string(), "{body}");
        assert!(body["timestamp"].is_string(), "{body}");
    }
}

fn types_match(expected: &Value, actual: &Value, path: &str, problems: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                match a.get(key) {
                    None => problems.push(format!("{path}.{key} missing")),
                    Some(actual) => types_match(value, actual, &format!("{path}.{key}"), problems),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let (Some(e), Some(a)) = (e.first(), a.first()) {
                types_match(e, a, &format!("{path}[0]"), problems);
            }
        }
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        (e, a) => problems.push(format!("{path}: expected a value like {e}, got {a}")),
    }
}

#[tokio::test]
async fn the_response_matches_the_api_document_field_for_field() {
    let f = fixture().await;
    let (status, body) = stats_status(&f.app, "tokenExpiry", &admin_token(), TENANT).await;
    assert_eq!(status, 200);
    // The success example of the API document (shared/spec/get-job-stats.md), verbatim.
    let example: Value =
        serde_json::from_str(include_str!("../fixtures/get-job-stats-example.json")).unwrap();
    let mut problems = Vec::new();
    types_match(&example, &body, "$", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}\n{body:#}");

    let data = &body["data"];
    assert_eq!(body["message"], "Job statistics retrieved successfully");
    assert_eq!(
        data["queue"],
        json!({"pending": 0, "processing": 0, "failed": 0, "completed": 2})
    );
    assert_eq!(data["performance"]["averageExecutionTime"], "40s");
    assert_eq!(data["performance"]["lastExecutionTime"], "38s");
    assert_eq!(data["performance"]["successRate"], "100.0%");
    assert_eq!(data["schedule"]["lastRun"], "2025-07-10T12:00:00.000Z");
    assert_eq!(data["recentExecutions"][0]["id"], "exec-001");
    assert_eq!(
        data["recentExecutions"][0]["completedAt"],
        "2025-07-10T12:00:38.000Z"
    );
    assert_eq!(data["recentExecutions"][1]["id"], "exec-002");
    let next_run =
        chrono::DateTime::parse_from_rfc3339(data["schedule"]["nextRun"].as_str().unwrap())
            .unwrap();
    let generated =
        chrono::DateTime::parse_from_rfc3339(data["generatedAt"].as_str().unwrap()).unwrap();
    assert!(next_run > generated && next_run - generated <= chrono::Duration::hours(6));
    assert_eq!(next_run.timestamp() % (6 * 3600), 0);
    for stamp in [
        &data["generatedAt"],
        &body["timestamp"],
        &data["schedule"]["nextRun"],
    ] {
        let text = stamp.as_str().unwrap();
        assert!(
            text.ends_with('Z') && text.len() == 24,
            "{text} is RFC 3339 UTC with milliseconds"
        );
    }
    let (status, body) = {
        let auth = format!("Bearer {}", admin_token());
        let (s, b, _) = get(
            &f.app,
            "/api/v1/admin/jobs/tokenExpiry/stats?recent=1",
            &[("authorization", &auth), ("x-tenantid", TENANT)],
        )
        .await;
        (s, b)
    };
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["recentExecutions"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn tenant_header_rules() {
    let f = fixture().await;
    let auth = format!("Bearer {}", admin_token());
    let path = "/api/v1/admin/jobs/tokenExpiry/stats";
    let (status, body, _) = get(&f.app, path, &[("authorization", &auth)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (400, "INVALID_TENANT_ID")
    );
    let (status, body, _) = get(
        &f.app,
        path,
        &[("authorization", &auth), ("x-tenantid", "not-a-uuid")],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (400, "INVALID_TENANT_ID")
    );
    let (status, body, _) = get(
        &f.app,
        path,
        &[
            ("authorization", &auth),
            ("x-tenantid", TENANT),
            ("x-tenantid", TENANT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (400, "INVALID_TENANT_ID")
    );
    // Uppercase is the same tenant.
    let (status, _) = stats_status(
        &f.app,
        "tokenExpiry",
        &admin_token(),
        &TENANT.to_uppercase(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn job_name_rules() {
    let f = fixture().await;
    let token = token(&["super_admin"], None);
    for (name, expected) in [
        ("a".repeat(128), 404),
        ("a".repeat(129), 400),
        ("billing.sync_v2:eu-1".to_owned(), 404),
        ("has%20space".to_owned(), 400),
        ("a%2Fb".to_owned(), 400),
        ("..%2F..%2Fetc".to_owned(), 400),
        ("%C3%BCnicode".to_owned(), 400),
        ("nul%00".to_owned(), 400),
        ("-lead".to_owned(), 400),
        ("%FF".to_owned(), 400),
    ] {
        let (status, body) = stats_status(&f.app, &name, &token, TENANT).await;
        assert_eq!(status, expected, "{name}: {body}");
        if expected == 400 {
            assert_eq!(body["error"]["code"], "INVALID_JOB_NAME", "{name}: {body}");
        } else {
            assert_eq!(body["error"]["code"], "JOB_NOT_FOUND", "{name}");
        }
    }
}

#[tokio::test]
async fn an_unseen_job_is_404_with_the_same_body_whether_it_exists_elsewhere_or_nowhere() {
    let f = fixture().await;
    let other_admin = token(&["system_admin"], Some(OTHER_TENANT));
    let (status_a, a) = stats_status(&f.app, "tokenExpiry", &other_admin, OTHER_TENANT).await;
    let (status_b, b) = stats_status(&f.app, "neverSeen", &other_admin, OTHER_TENANT).await;
    assert_eq!((status_a, status_b), (404, 404));
    assert_eq!(a["error"], b["error"]);
    assert_eq!(a["message"], b["message"]);
    assert_eq!(a["error"]["code"], "JOB_NOT_FOUND");
}

#[tokio::test]
async fn roles_and_tenant_binding() {
    let f = fixture().await;
    let cases = [
        (token(&["viewer"], Some(TENANT)), TENANT, 403),
        (token(&[], Some(TENANT)), TENANT, 403),
        (token(&["system_admin"], Some(OTHER_TENANT)), TENANT, 403),
        (token(&["system_admin"], None), TENANT, 403),
        (token(&["system_admin"], Some(TENANT)), TENANT, 200),
        (token(&["super_admin"], None), TENANT, 200),
        (token(&["super_admin"], Some(OTHER_TENANT)), TENANT, 200),
    ];
    for (token, tenant, expected) in cases {
        let (status, body) = stats_status(&f.app, "tokenExpiry", &token, tenant).await;
        assert_eq!(status, expected, "{body}");
        if expected == 403 {
            assert_eq!(body["error"]["code"], "FORBIDDEN");
        }
    }
}

fn sign(claims: &Value, algorithm: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
}

fn claims(extra: Value) -> Value {
    let now = Utc::now().timestamp();
    let mut base = json!({"sub": "t", "roles": ["system_admin"], "tenant_id": TENANT, "iat": now, "exp": now + 300});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn token_rules() {
    let f = fixture().await;
    let now = Utc::now().timestamp();
    let none_token = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims(json!({})).to_string().as_bytes())
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("valid", hs(&claims(json!({}))), 200),
        ("alg none", none_token, 401),
        ("expired", hs(&claims(json!({"exp": now - 120}))), 401),
        (
            "expired within leeway",
            hs(&claims(json!({"exp": now - 10}))),
            200,
        ),
        (
            "nbf in the future",
            hs(&claims(json!({"nbf": now + 120}))),
            401,
        ),
        ("no exp", hs(&claims(json!({"exp": null}))), 401),
        (
            "wrong signature",
            sign(
                &claims(json!({})),
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-another-secret-xx").unwrap(),
            ),
            401,
        ),
        ("garbage", "not.a.token".into(), 401),
        (
            "oversized",
            hs(&claims(json!({"padding": "x".repeat(10_000)}))),
            401,
        ),
        (
            "keycloak shaped",
            hs(&claims(
                json!({"roles": null, "realm_access": {"roles": ["system_admin"]}, "aud": "account"}),
            )),
            200,
        ),
    ];
    for (name, token, expected) in cases {
        let (status, body) = stats_status(&f.app, "tokenExpiry", &token, TENANT).await;
        assert_eq!(status, expected, "{name}: {body}");
        if expected == 401 {
            assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{name}");
        }
    }
    // Missing and repeated Authorization headers.
    let path = "/api/v1/admin/jobs/tokenExpiry/stats";
    let (status, _, headers) = get(&f.app, path, &[("x-tenantid", TENANT)]).await;
    assert_eq!(status, 401);
    assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    let auth = format!("Bearer {}", admin_token());
    let (status, _, _) = get(
        &f.app,
        path,
        &[
            ("authorization", &auth),
            ("authorization", &auth),
            ("x-tenantid", TENANT),
        ],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = get(
        &f.app,
        path,
        &[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("x-tenantid", TENANT),
        ],
    )
    .await;
    assert_eq!(status, 401);
}

const RSA_PRIVATE: &str = include_str!("../fixtures/keys/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../fixtures/keys/rsa-public.pem");

#[tokio::test]
async fn rs256_issuer_realm_and_audience_rules() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys.pem");
    std::fs::write(&key_file, RSA_PUBLIC).unwrap();
    let f = fixture_with(jobstats::api::auth::AuthSettings {
        hs256_secret: None,
        public_key_file: Some(key_file),
        issuer: Some("https://sso.example.com/realms/{realm}".into()),
        realms: Some(vec!["acme".into(), "globex".into()]),
        audience: Some("jobstats".into()),
        jwks_url: None,
    })
    .await;
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let issued = |realm: &str, extra: Value| {
        let mut c = claims(
            json!({"iss": format!("https://sso.example.com/realms/{realm}"), "aud": "jobstats"}),
        );
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(&c, Algorithm::RS256, &rsa)
    };
    let path = "/api/v1/admin/jobs/tokenExpiry/stats";
    let call = |token: String, realm: Option<&'static str>| {
        let app = &f.app;
        async move {
            let auth = format!("Bearer {token}");
            let mut headers = vec![
                ("authorization", auth.clone()),
                ("x-tenantid", TENANT.to_owned()),
            ];
            if let Some(realm) = realm {
                headers.push(("realmname", realm.to_owned()));
            }
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get(app, path, &pairs).await.0
        }
    };
    assert_eq!(
        call(issued("acme", json!({})), None).await,
        200,
        "valid RS256 without realmname"
    );
    assert_eq!(
        call(issued("acme", json!({})), Some("acme")).await,
        200,
        "realm matches"
    );
    assert_eq!(
        call(issued("acme", json!({})), Some("globex")).await,
        401,
        "realm mismatch"
    );
    assert_eq!(
        call(issued("acme", json!({})), Some("initech")).await,
        401,
        "unknown realm"
    );
    assert_eq!(
        call(issued("initech", json!({})), None).await,
        401,
        "issuer outside the allow-list"
    );
    assert_eq!(
        call(
            issued(
                "acme",
                json!({"iss": "https://evil.example.com/realms/acme"})
            ),
            None
        )
        .await,
        401,
        "wrong issuer"
    );
    assert_eq!(
        call(issued("acme", json!({"aud": "account"})), None).await,
        401,
        "wrong audience"
    );
    // HS256 signed with the public key as the HMAC secret: HS256 is not an accepted algorithm.
    let confused = sign(
        &claims(json!({"iss": "https://sso.example.com/realms/acme", "aud": "jobstats"})),
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
    );
    assert_eq!(
        call(confused, None).await,
        401,
        "HS256 with the RSA public key"
    );
}

#[tokio::test]
async fn errors_are_json_everywhere() {
    let f = fixture().await;
    let (status, body, _) = get(&f.app, "/no/such/route", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (404, "NOT_FOUND")
    );
    let response = f
        .app
        .http
        .post(f.app.url("/api/v1/admin/jobs/tokenExpiry/stats"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
    let auth = format!("Bearer {}", admin_token());
    // Every bad value, and a repeat (which poem would silently read as its first), is a 400
    // whose message names the parameter in the user's words, not the framework's types.
    for query in [
        "recent=0",
        "recent=101",
        "recent=abc",
        "recent=5&recent=7",
        "recent=-1",
    ] {
        let (status, body, _) = get(
            &f.app,
            &format!("/api/v1/admin/jobs/tokenExpiry/stats?{query}"),
            &[("authorization", &auth), ("x-tenantid", TENANT)],
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            (400, "INVALID_PARAMETER"),
            "{query}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("recent"), "{query}: {message}");
        assert!(
            !message.contains("uint32") && !message.contains("optional_"),
            "{query}: {message}"
        );
    }
    let head = f
        .app
        .http
        .head(f.app.url("/api/v1/admin/jobs/tokenExpiry/stats"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn health_readiness_metrics_and_docs_are_served() {
    let f = fixture().await;
    let (status, body, _) = get(&f.app, "/healthz", &[]).await;
    assert_eq!((status, body["status"].as_str().unwrap()), (200, "ok"));
    let ready = f.app.readyz().await;
    assert_eq!(ready["status"], "ready");
    let _ = stats_status(&f.app, "tokenExpiry", &admin_token(), TENANT).await;
    let metrics = f.app.metrics().await;
    for name in [
        "jobstats_events_applied_total",
        "jobstats_last_applied_sequence",
        "jobstats_projector_lag_events",
        "jobstats_http_requests_total{route=\"/api/v1/admin/jobs/{jobName}/stats\",status=\"200\"}",
        "jobstats_http_request_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let spec: Value = f
        .app
        .http
        .get(f.app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/admin/jobs/{jobName}/stats"]["get"].is_object());
    let docs = f
        .app
        .http
        .get(f.app.url("/api/v1/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn checks_run_in_the_documented_order() {
    let f = fixture().await;
    // 401 before anything else.
    let (status, _, _) = get(
        &f.app,
        "/api/v1/admin/jobs/bad%20name/stats",
        &[("x-tenantid", "nope")],
    )
    .await;
    assert_eq!(status, 401);
    // Then the tenant header, then the job name, both before authorization.
    let viewer = format!("Bearer {}", token(&["viewer"], Some(OTHER_TENANT)));
    let (status, body, _) = get(
        &f.app,
        "/api/v1/admin/jobs/bad%20name/stats",
        &[("authorization", &viewer), ("x-tenantid", "nope")],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (400, "INVALID_TENANT_ID")
    );
    let (status, body, _) = get(
        &f.app,
        "/api/v1/admin/jobs/bad%20name/stats",
        &[("authorization", &viewer), ("x-tenantid", TENANT)],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (400, "INVALID_JOB_NAME")
    );
    // Then authorization, before the lookup: a forbidden caller cannot probe which jobs exist.
    let (status, body, _) = get(
        &f.app,
        "/api/v1/admin/jobs/neverSeen/stats",
        &[("authorization", &viewer), ("x-tenantid", TENANT)],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (403, "FORBIDDEN")
    );
}

#[tokio::test]
async fn a_500_says_only_that_something_went_wrong_never_what() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;
    let t0 = Utc.with_ymd_and_hms(2025, 7, 10, 6, 0, 0).unwrap();
    let head = publish_all(
        &publisher,
        &execution_events("broken", "e1", t0, 1_000, true),
    )
    .await;
    app.wait_applied(head).await;
    // The read model loses a table under the running server (as a bad migration or a hand
    // edit would): reads of a job not yet cached fail inside SQLite.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.execute_batch("DROP TABLE job_stats").unwrap();
    drop(conn);

    let auth = format!("Bearer {}", admin_token());
    let headers = [("authorization", auth.as_str()), ("x-tenantid", TENANT)];
    let (status, body, _) = get(&app, "/api/v1/admin/jobs/broken/stats", &headers).await;
    assert_eq!(status, 500, "{body}");
    assert_error_envelope_if_error(status, &body);
    assert_eq!(body["error"]["code"], "INTERNAL_ERROR", "{body}");
    // Exactly the envelope: no field for a cause, a trace or a path.
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["error", "message", "success", "timestamp"],
        "{body}"
    );
    assert_eq!(
        body["error"].as_object().unwrap().len(),
        1,
        "only the code: {body}"
    );
    let text = body.to_string().to_lowercase();
    for internal in [
        "job_stats",
        "sqlite",
        "no such",
        "table",
        "internal error:",
        &dir.path().display().to_string().to_lowercase(),
    ] {
        assert!(!text.contains(internal), "{internal:?} in a 500: {body}");
    }
    app.stop().await;
}
