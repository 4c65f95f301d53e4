//! Checked contracts: the event corpus against the Rust decoder and the JSON Schemas, the
//! committed OpenAPI document, and the files the compose setup references.

use std::path::Path;

use serde_json::Value;

pub struct Case {
    pub name: String,
    pub subject: String,
    pub body: Option<Value>,
    pub payload: Vec<u8>,
    pub valid: bool,
    pub reason: Option<String>,
    pub schema_agrees: bool,
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// The corpus of `tests/fixtures/events.json`, with payload bytes built as its README says.
pub fn corpus() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cases
        .into_iter()
        .map(|case| {
            let body = case.get("body").cloned();
            let payload = if let Some(raw) = case["bodyRaw"].as_str() {
                raw.as_bytes().to_vec()
            } else if let Some(encoded) = case["bodyBase64"].as_str() {
                decode_base64(encoded)
            } else {
                let mut bytes = serde_json::to_vec(body.as_ref().expect("body")).unwrap();
                if let Some(size) = case["oversizeBytes"].as_u64() {
                    let mut padded = body.clone().unwrap();
                    padded["padding"] = Value::String(String::new());
                    let base = serde_json::to_vec(&padded).unwrap().len();
                    padded["padding"] = Value::String("p".repeat(size as usize - base));
                    bytes = serde_json::to_vec(&padded).unwrap();
                    assert_eq!(bytes.len() as u64, size);
                }
                bytes
            };
            Case {
                name: case["name"].as_str().unwrap().to_owned(),
                subject: case["subject"].as_str().unwrap().to_owned(),
                body: if case.get("oversizeBytes").is_some() {
                    None
                } else {
                    body
                },
                payload,
                valid: case["valid"].as_bool().unwrap(),
                reason: case["reason"].as_str().map(str::to_owned),
                schema_agrees: case["schema"] == "agree",
            }
        })
        .collect()
}

#[test]
fn the_decoder_gives_every_corpus_case_its_expected_verdict_and_reason() {
    let mut failures = Vec::new();
    for case in corpus() {
        let result = jobstats::events::decode(&case.subject, &case.payload);
        let got = result.as_ref().err().map(|e| e.code().to_owned());
        if result.is_ok() != case.valid || got != case.reason {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.name,
                case.reason,
                result.err()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_json_schemas_agree_with_the_decoder_on_the_corpus() {
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/event.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("event.json compiles");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in corpus() {
        let Some(body) = &case.body else { continue };
        let schema_valid = validator.is_valid(body);
        let expected = if case.schema_agrees { case.valid } else { true };
        checked += 1;
        if schema_valid != expected {
            failures.push(format!(
                "{}: schema says {schema_valid}, expected {expected}",
                case.name
            ));
        }
    }
    assert!(checked > 80, "only {checked} cases had a JSON body");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_event_type_has_a_schema_whose_examples_decode() {
    for event_type in jobstats::events::EventType::ALL {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{event_type}.json"));
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let examples = schema["examples"].as_array().expect("examples");
        assert!(!examples.is_empty());
        for example in examples {
            let subject = format!(
                "jobs.events.{}.{event_type}",
                example["tenantId"].as_str().unwrap()
            );
            jobstats::events::decode(&subject, &serde_json::to_vec(example).unwrap())
                .unwrap_or_else(|e| panic!("{event_type} example: {e}"));
        }
    }
}

#[test]
fn the_committed_openapi_document_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated: Value = serde_json::from_str(&jobstats::api::openapi_json()).unwrap();
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or(Value::Null);
    assert!(
        committed == generated,
        "openapi.json is stale: run `cargo run -- openapi > openapi.json`"
    );
    let operation = &generated["paths"]["/admin/jobs/{jobName}/stats"]["get"];
    for status in ["200", "400", "401", "403", "404", "500"] {
        assert!(
            operation["responses"][status].is_object(),
            "response {status} is documented"
        );
    }
    assert_eq!(
        generated["components"]["securitySchemes"]["BearerAuth"]["scheme"],
        "bearer"
    );
}

#[test]
fn the_compose_file_references_files_and_variables_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .unwrap();
    let services = compose["services"].as_mapping().expect("services");
    assert!(services.contains_key("nats") && services.contains_key("jobstats"));
    for (name, service) in services {
        // The settings of the command this service runs (the image's default: serve).
        let command = service
            .get("command")
            .and_then(|c| c.as_sequence())
            .and_then(|c| c.first())
            .and_then(|c| c.as_str())
            .unwrap_or("serve");
        let cli_help = std::process::Command::new(crate::helpers::BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&cli_help.stdout).to_string();
        if let Some(build) = service.get("build") {
            let context = build
                .get("context")
                .and_then(|c| c.as_str())
                .or(build.as_str())
                .unwrap_or(".");
            let dockerfile = build
                .get("dockerfile")
                .and_then(|d| d.as_str())
                .unwrap_or("Dockerfile");
            assert!(
                root.join(context).join(dockerfile).is_file(),
                "{name:?}: {dockerfile} missing"
            );
        }
        for volume in service
            .get("volumes")
            .and_then(|v| v.as_sequence())
            .into_iter()
            .flatten()
        {
            let spec = volume.as_str().unwrap_or_default();
            if let Some(source) = spec.split(':').next().filter(|s| s.starts_with('.')) {
                assert!(
                    root.join(source).exists(),
                    "{name:?}: volume source {source} missing"
                );
            }
        }
        let environment = service.get("environment");
        let variables: Vec<String> = match environment {
            Some(serde_yaml::Value::Mapping(map)) => map
                .keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            Some(serde_yaml::Value::Sequence(list)) => list
                .iter()
                .filter_map(|v| v.as_str().map(|s| s.split('=').next().unwrap().to_owned()))
                .collect(),
            _ => Vec::new(),
        };
        for variable in variables.iter().filter(|v| v.starts_with("JOBSTATS_")) {
            assert!(
                help.contains(variable.as_str()),
                "{name:?}: {variable} is not a jobstats setting"
            );
        }
    }
}
