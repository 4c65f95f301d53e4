//! The job list and the execution history (CONTRACT §5): every filter, sort and page against a
//! brute-force answer, cursors across pages while events arrive, tenant isolation, bad input.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use jobstats::events::Event;
use jobstats::publish::EventBuilder;
use serde_json::Value;

use crate::helpers::*;

const MIN: i64 = 60_000;

/// What the test knows about each job it made.
#[derive(Debug, Clone)]
struct Made {
    tenant: &'static str,
    name: String,
    state: &'static str,
    last_run: Option<i64>,
    success_rate: Option<f64>,
}

fn at(ms: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

/// Jobs in every state: failing, healthy, new, stuck (started 2 h ago, default 1 h limit),
/// missed (hourly, last run 3 h ago).
fn make_jobs(tenant: &'static str, count: usize, now: i64) -> (Vec<Made>, Vec<Event>) {
    let mut made = Vec::new();
    let mut events = Vec::new();
    for i in 0..count {
        let name = format!("job-{:04}-{}", (i * 7919) % 10_000, &tenant[..4]);
        let b = EventBuilder::new(tenant, &name).unwrap();
        let run = b.clone().execution("r1").unwrap();
        let start = now - 3 * 60 * MIN + i as i64 * 1_000;
        let (state, last_run, success_rate) = match i % 5 {
            0 => {
                events.push(run.clone().at(at(start)).started().unwrap());
                events.push(run.at(at(start + 500)).failed(None, Some("no")).unwrap());
                ("failing", Some(start), Some(0.0))
            }
            1 => {
                events.push(run.clone().at(at(start)).started().unwrap());
                events.push(run.at(at(start + 500)).completed(Some(1)).unwrap());
                ("healthy", Some(start), Some(100.0))
            }
            2 => {
                events.push(run.at(at(start)).enqueued().unwrap());
                ("new", None, None)
            }
            3 => {
                events.push(run.at(at(now - 2 * 60 * MIN - i as i64)).started().unwrap());
                ("stuck", Some(now - 2 * 60 * MIN - i as i64), None)
            }
            _ => {
                events.push(
                    b.clone()
                        .at(at(now - 5 * 60 * MIN))
                        .scheduled(Some("0 * * * *"))
                        .unwrap(),
                );
                let second = b.clone().execution("r2").unwrap();
                events.push(run.clone().at(at(start)).started().unwrap());
                events.push(run.at(at(start + 500)).completed(None).unwrap());
                events.push(second.clone().at(at(start + 1_000)).started().unwrap());
                events.push(second.at(at(start + 1_500)).failed(None, None).unwrap());
                ("missed", Some(start + 1_000), Some(50.0))
            }
        };
        made.push(Made {
            tenant,
            name,
            state,
            last_run,
            success_rate,
        });
    }
    (made, events)
}

async fn list(app: &App, query: &str, token: &str, tenant: &str) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(&format!("/api/v1/admin/jobs{query}")))
        .bearer_auth(token)
        .header("x-tenantid", tenant)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Every page of a query, chained by cursor: the names in order and the total.
async fn all_pages(app: &App, query: &str, tenant: &str) -> (Vec<String>, u64) {
    let token = token(&["system_admin"], Some(tenant));
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut total = None;
    loop {
        let separator = if query.is_empty() { "?" } else { "&" };
        let page_query = match &cursor {
            Some(c) => format!("{query}{separator}cursor={c}"),
            None => query.to_owned(),
        };
        let (status, body) = list(app, &page_query, &token, tenant).await;
        assert_eq!(status, 200, "{page_query}: {body}");
        assert_eq!(body["message"], "Jobs retrieved successfully");
        let page_total = body["data"]["total"].as_u64().unwrap();
        assert_eq!(*total.get_or_insert(page_total), page_total, "{page_query}");
        for job in body["data"]["jobs"].as_array().unwrap() {
            names.push(job["jobName"].as_str().unwrap().to_owned());
        }
        match body["data"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    (names, total.unwrap_or(0))
}

/// The brute-force answer: filter, then sort with absent keys last and ties by name.
fn expected(
    made: &[Made],
    tenant: &str,
    health: &[&str],
    prefix: &str,
    sort: &str,
    desc: bool,
) -> Vec<String> {
    let mut jobs: Vec<&Made> = made
        .iter()
        .filter(|m| m.tenant == tenant && m.name.starts_with(prefix))
        .filter(|m| health.is_empty() || health.contains(&m.state))
        .collect();
    let order = ["unknown", "stuck", "missed", "failing", "healthy", "new"];
    let key = |m: &Made| -> Option<f64> {
        match sort {
            "lastRun" => m.last_run.map(|t| t as f64),
            "successRate" => m.success_rate,
            "health" => order.iter().position(|s| *s == m.state).map(|p| p as f64),
            _ => None,
        }
    };
    jobs.sort_by(|a, b| {
        if sort == "name" {
            let o = a.name.cmp(&b.name);
            return if desc { o.reverse() } else { o };
        }
        let by_key = match (key(a), key(b)) {
            (Some(x), Some(y)) if desc => y.total_cmp(&x),
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_key.then_with(|| a.name.cmp(&b.name))
    });
    jobs.into_iter().map(|m| m.name.clone()).collect()
}

#[tokio::test]
async fn the_job_list_filters_sorts_and_pages_exactly_like_a_brute_force_answer() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let now = Utc::now().timestamp_millis();
    let (mut made, mut events) = make_jobs(TENANT, 1_200, now);
    let (other, other_events) = make_jobs(OTHER_TENANT, 800, now);
    made.extend(other);
    events.extend(other_events);
    let last = publish_all(&publisher, &events).await;
    app.wait_applied(last).await;

    // States as the stats endpoint sees them agree with how the jobs were made.
    for m in made.iter().step_by(97) {
        let (status, body) = get_stats(&app, &m.name, m.tenant).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["health"]["state"], m.state, "{}", m.name);
    }

    for (query, health, prefix, sort, desc) in [
        ("?limit=50", vec![], "", "name", false),
        ("?order=desc&limit=77", vec![], "", "name", true),
        ("?q=job-1&limit=13", vec![], "job-1", "name", false),
        (
            "?health=missed,stuck&limit=40",
            vec!["missed", "stuck"],
            "",
            "name",
            false,
        ),
        (
            "?health=failing&sort=lastRun&order=desc&limit=33",
            vec!["failing"],
            "",
            "lastRun",
            true,
        ),
        ("?sort=lastRun&limit=100", vec![], "", "lastRun", false),
        (
            "?sort=successRate&order=desc&limit=61",
            vec![],
            "",
            "successRate",
            true,
        ),
        (
            "?sort=successRate&limit=500",
            vec![],
            "",
            "successRate",
            false,
        ),
        ("?sort=health&limit=90", vec![], "", "health", false),
        (
            "?sort=health&order=desc&q=job-2&limit=7",
            vec![],
            "job-2",
            "health",
            true,
        ),
        (
            "?health=new,healthy&q=job-3",
            vec!["new", "healthy"],
            "job-3",
            "name",
            false,
        ),
    ] {
        for tenant in [TENANT, OTHER_TENANT] {
            let want = expected(&made, tenant, &health, prefix, sort, desc);
            let (got, total) = all_pages(&app, query, tenant).await;
            assert_eq!(got.len(), want.len(), "{query} for {tenant}");
            assert_eq!(got, want, "{query} for {tenant}");
            assert_eq!(total as usize, want.len(), "{query} total");
        }
    }

    // A system_admin sees only its tenant and cannot ask for another.
    let own = token(&["system_admin"], Some(TENANT));
    let (status, body) = list(&app, "?limit=500", &own, OTHER_TENANT).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    let (names, _) = all_pages(&app, "?limit=500", TENANT).await;
    let theirs: HashSet<&str> = made
        .iter()
        .filter(|m| m.tenant == OTHER_TENANT)
        .map(|m| m.name.as_str())
        .collect();
    assert!(names.iter().all(|n| !theirs.contains(n.as_str())));
    // A super_admin reads any tenant.
    let sup = token(&["super_admin"], None);
    let (status, _) = list(&app, "", &sup, OTHER_TENANT).await;
    assert_eq!(status, 200);
}

async fn get_stats(app: &App, job: &str, tenant: &str) -> (u16, Value) {
    let response = app
        .stats_with(job, &token(&["super_admin"], None), tenant)
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn pages_chained_by_cursor_cover_every_job_once_while_events_keep_arriving() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let now = Utc::now().timestamp_millis();
    let (made, events) = make_jobs(TENANT, 600, now);
    let last = publish_all(&publisher, &events).await;
    app.wait_applied(last).await;

    // Runs of existing jobs keep arriving while the pages are read.
    let busy = made.clone();
    let feeder = tokio::spawn(async move {
        for round in 0..20 {
            let batch: Vec<Event> = busy
                .iter()
                .step_by(7)
                .flat_map(|m| execution_events_for(m.tenant, &m.name, &format!("extra-{round}")))
                .collect();
            publish_all(&publisher, &batch).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for (query, desc) in [("?limit=17", false), ("?limit=23&order=desc", true)] {
        let (names, total) = all_pages(&app, query, TENANT).await;
        let want = expected(&made, TENANT, &[], "", "name", desc);
        assert_eq!(names, want, "{query}");
        assert_eq!(total, 600);
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "no duplicates");
    }
    feeder.await.unwrap();
}

fn execution_events_for(tenant: &str, job: &str, id: &str) -> Vec<Event> {
    let run = EventBuilder::new(tenant, job)
        .unwrap()
        .execution(id)
        .unwrap();
    let start = Utc::now();
    vec![
        run.clone().at(start).started().unwrap(),
        run.at(start + chrono::Duration::milliseconds(5))
            .completed(None)
            .unwrap(),
    ]
}

#[tokio::test]
async fn bad_list_and_execution_parameters_are_400_naming_the_parameter() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let now = Utc::now().timestamp_millis();
    let (_, events) = make_jobs(TENANT, 10, now);
    let (_, other) = make_jobs(OTHER_TENANT, 10, now);
    let last = publish_all(&publisher, &[events, other].concat()).await;
    app.wait_applied(last).await;
    let admin = admin_token();
    let sup = token(&["super_admin"], None);

    // A cursor of another tenant's, another sort's query.
    let (_, page) = list(&app, "?limit=2", &sup, OTHER_TENANT).await;
    let foreign = page["data"]["nextCursor"].as_str().unwrap().to_owned();
    let (_, page) = list(&app, "?limit=2&sort=lastRun", &admin, TENANT).await;
    let other_sort = page["data"]["nextCursor"].as_str().unwrap().to_owned();

    for (query, parameter) in [
        ("?health=bogus".to_owned(), "health"),
        ("?health=missed,".to_owned(), "health"),
        ("?sort=size".to_owned(), "sort"),
        ("?order=up".to_owned(), "order"),
        ("?limit=0".to_owned(), "limit"),
        ("?limit=501".to_owned(), "limit"),
        ("?limit=ten".to_owned(), "limit"),
        ("?limit=5&limit=6".to_owned(), "limit"),
        ("?q=has%20space".to_owned(), "q"),
        ("?cursor=bm9wZQ".to_owned(), "cursor"),
        (format!("?limit=2&cursor={foreign}"), "cursor"),
        (format!("?limit=2&cursor={other_sort}"), "cursor"),
    ] {
        let (status, body) = list(&app, &query, &admin, TENANT).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_PARAMETER", "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(parameter),
            "{query}: {body}"
        );
    }
    let job = "job-0000-3f0c";
    for (query, parameter) in [
        ("?status=done", "status"),
        ("?from=yesterday", "from"),
        ("?to=2025-13-01T00:00:00Z", "to"),
        ("?from=2025-07-11T00:00:00Z&to=2025-07-10T00:00:00Z", "from"),
        ("?limit=1000", "limit"),
        ("?status=failed&status=completed", "status"),
    ] {
        let response = app
            .http
            .get(app.url(&format!("/api/v1/admin/jobs/{job}/executions{query}")))
            .bearer_auth(&admin)
            .header("x-tenantid", TENANT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_PARAMETER", "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(parameter),
            "{body}"
        );
    }
    // Unknown job, unauthenticated, another tenant's admin.
    let (status, body) = executions_page(&app, "nope", "", &admin, TENANT).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("JOB_NOT_FOUND"))
    );
    let response = app
        .http
        .get(app.url("/api/v1/admin/jobs"))
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (status, _) = executions_page(&app, job, "", &admin, OTHER_TENANT).await;
    assert_eq!(status, 403);
}

async fn executions_page(
    app: &App,
    job: &str,
    query: &str,
    token: &str,
    tenant: &str,
) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(&format!("/api/v1/admin/jobs/{job}/executions{query}")))
        .bearer_auth(token)
        .header("x-tenantid", tenant)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn ten_thousand_executions_page_by_status_and_time_exactly_once_in_order() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let first = Utc::now() - chrono::Duration::days(3);
    // Every 7th fails, every 11th is still processing; starts 20 s apart, some sharing a
    // second so ties are broken by id.
    let mut events = runs(
        "batch",
        10_000,
        first,
        chrono::Duration::seconds(20),
        |i| 1_000 + (i % 13) * 100,
        |i| i % 7 != 0,
    );
    events.retain(|e| {
        let id = e
            .execution_id()
            .map(|x| x.as_str().to_owned())
            .unwrap_or_default();
        let i: i64 = id[1..].parse().unwrap();
        !(i % 11 == 0
            && matches!(
                e.kind,
                jobstats::events::EventKind::Completed { .. }
                    | jobstats::events::EventKind::Failed { .. }
            ))
    });
    let last = publish_all(&publisher, &events).await;
    app.wait_applied(last).await;

    // The brute-force model: id → (start, state).
    let mut model: BTreeMap<String, (i64, &str)> = BTreeMap::new();
    for i in 0..10_000i64 {
        let start = (first + chrono::Duration::seconds(20 * i)).timestamp_millis();
        let state = if i % 11 == 0 {
            "processing"
        } else if i % 7 == 0 {
            "failed"
        } else {
            "completed"
        };
        model.insert(format!("e{i:06}"), (start, state));
    }
    let from = (first + chrono::Duration::hours(10)).timestamp_millis();
    let to = (first + chrono::Duration::hours(40)).timestamp_millis();
    let admin = admin_token();
    for (statuses, range) in [
        (vec!["failed", "processing"], Some((from, to))),
        (vec![], None),
        (vec!["completed"], Some((from, to))),
    ] {
        let mut want: Vec<(i64, String)> = model
            .iter()
            .filter(|(_, (_, state))| statuses.is_empty() || statuses.contains(state))
            .filter(|(_, (start, _))| range.is_none_or(|(f, t)| *start >= f && *start <= t))
            .map(|(id, (start, _))| (*start, id.clone()))
            .collect();
        want.sort();
        want.reverse();
        let mut query = String::from("?limit=100");
        if !statuses.is_empty() {
            query.push_str(&format!("&status={}", statuses.join(",")));
        }
        if let Some((f, t)) = range {
            let text = |ms: i64| {
                Utc.timestamp_millis_opt(ms)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            };
            query.push_str(&format!("&from={}&to={}", text(f), text(t)));
        }
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.clone(),
            };
            let (status, body) = executions_page(&app, "batch", &q, &admin, TENANT).await;
            assert_eq!(status, 200, "{q}: {body}");
            assert_eq!(body["message"], "Executions retrieved successfully");
            let page = body["data"]["executions"].as_array().unwrap();
            assert!(page.len() <= 100);
            for e in page {
                let id = e["id"].as_str().unwrap().to_owned();
                let (start, state) = model[&id];
                assert_eq!(e["status"], state, "{id}");
                got.push((start, id));
            }
            match body["data"]["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(got.len(), want.len(), "{query}");
        assert_eq!(got, want, "{query}");
    }
}

/// Every page of a job's executions, newest first, each page followed by `between` (which
/// publishes events and waits for them): the ids in the order read.
async fn executions_paged_while(
    app: &App,
    job: &str,
    limit: u32,
    mut between: impl FnMut(usize, &[String]) -> futures::future::BoxFuture<'static, ()>,
) -> Vec<String> {
    let admin = admin_token();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let q = match &cursor {
            Some(c) => format!("?limit={limit}&cursor={c}"),
            None => format!("?limit={limit}"),
        };
        let (status, body) = executions_page(app, job, &q, &admin, TENANT).await;
        assert_eq!(status, 200, "{q}: {body}");
        for e in body["data"]["executions"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_owned());
        }
        match body["data"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        between(page, &ids).await;
    }
    ids
}

#[tokio::test]
async fn execution_pages_never_skip_or_repeat_while_pending_executions_start() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let t0 = Utc::now() - chrono::Duration::hours(2);
    // 1,000 pending executions, enqueued a second apart.
    let job = EventBuilder::new(TENANT, "queue").unwrap();
    let enqueued: Vec<Event> = (0..1_000)
        .map(|i| {
            job.clone()
                .execution(&format!("e{i:04}"))
                .unwrap()
                .at(t0 + chrono::Duration::seconds(i))
                .enqueued()
                .unwrap()
        })
        .collect();
    app.wait_applied(publish_all(&publisher, &enqueued).await)
        .await;
    // After each page of 20, ten executions not read yet start, and ten already read: the
    // events that move a row under a start-time order.
    let started = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let ids = executions_paged_while(&app, "queue", 20, |page, read| {
        let unread: Vec<String> = (0..1_000)
            .map(|i| format!("e{i:04}"))
            .filter(|id| !read.contains(id) && !started.lock().unwrap().contains(id))
            .step_by(7)
            .take(10)
            .chain(read.iter().rev().step_by(3).take(10).cloned())
            .collect();
        let events: Vec<Event> = unread
            .iter()
            .map(|id| {
                started.lock().unwrap().insert(id.clone());
                job.clone()
                    .execution(id)
                    .unwrap()
                    .at(t0 + chrono::Duration::seconds(5_000 + page as i64))
                    .started()
                    .unwrap()
            })
            .collect();
        let publisher = publisher.clone();
        let app_readyz = app.admin_url("/readyz");
        Box::pin(async move {
            let head = publish_all(&publisher, &events).await;
            wait_applied(
                &reqwest::Client::new(),
                &app_readyz,
                head,
                Duration::from_secs(30),
            )
            .await;
        })
    })
    .await;
    assert!(
        started.lock().unwrap().len() > 400,
        "rows moved while paging"
    );
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an execution appeared twice");
    assert_eq!(ids.len(), 1_000, "an execution was skipped");
}

#[tokio::test]
async fn job_list_pages_sorted_by_a_moving_value_never_skip_or_repeat() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let t0 = Utc::now() - chrono::Duration::hours(2);
    // 300 jobs, each with one run, a second apart.
    let runs: Vec<Event> = (0..300)
        .flat_map(|i| {
            let run = EventBuilder::new(TENANT, &format!("job-{i:03}"))
                .unwrap()
                .execution("r0")
                .unwrap();
            let start = t0 + chrono::Duration::seconds(i);
            [
                run.clone().at(start).started().unwrap(),
                run.at(start + chrono::Duration::milliseconds(10))
                    .completed(None)
                    .unwrap(),
            ]
        })
        .collect();
    app.wait_applied(publish_all(&publisher, &runs).await).await;
    let token = token(&["system_admin"], Some(TENANT));
    for (query, failing_moves) in [
        ("?sort=lastRun&order=desc&limit=20", false),
        ("?sort=lastRun&order=asc&limit=20", false),
        ("?sort=successRate&order=desc&limit=20", true),
        ("?sort=health&limit=20", true),
    ] {
        let mut names: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut round = 0;
        loop {
            let q = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.to_owned(),
            };
            let (status, body) = list(&app, &q, &token, TENANT).await;
            assert_eq!(status, 200, "{q}: {body}");
            for job in body["data"]["jobs"].as_array().unwrap() {
                names.push(job["jobName"].as_str().unwrap().to_owned());
            }
            let Some(next) = body["data"]["nextCursor"].as_str() else {
                break;
            };
            cursor = Some(next.to_owned());
            // Ten jobs not read yet, and five read, run again now (a failure where that
            // moves them): under a live order they jump pages.
            round += 1;
            let movers: Vec<String> = (0..300)
                .map(|i| format!("job-{i:03}"))
                .filter(|n| !names.contains(n))
                .step_by(5)
                .take(10)
                .chain(names.iter().step_by(4).take(5).cloned())
                .collect();
            let events: Vec<Event> = movers
                .iter()
                .flat_map(|name| {
                    let run = EventBuilder::new(TENANT, name)
                        .unwrap()
                        .execution(&format!("{query}-{round}"))
                        .unwrap();
                    let start = Utc::now();
                    let end = start + chrono::Duration::milliseconds(10);
                    [
                        run.clone().at(start).started().unwrap(),
                        if failing_moves {
                            run.at(end).failed(None, Some("moved")).unwrap()
                        } else {
                            run.at(end).completed(None).unwrap()
                        },
                    ]
                })
                .collect();
            app.wait_applied(publish_all(&publisher, &events).await)
                .await;
        }
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{query}: a job appeared twice");
        assert_eq!(names.len(), 300, "{query}: a job was skipped");
    }
}
