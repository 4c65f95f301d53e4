//! `POST/GET /api/v1/admin/keys` and `DELETE /api/v1/admin/keys/{id}` (CONTRACT §10): a
//! `system_admin` manages its own tenant's ingest keys (the tenant in `x-tenantid`), a
//! `super_admin` any tenant's. The key itself appears only in the create answer.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::{handler, web::Data, web::Path, Body, Request, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::api::auth::{Principal, ROLE_SUPER_ADMIN};
use crate::api::errors::ApiError;
use crate::api::AppState;
use crate::events::TenantId;
use crate::keys::{KeyError, KeyRecord, KeyStore};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKey {
    name: Option<String>,
    #[serde(default)]
    auto_create: bool,
}

/// A key as listed: never the key, never its hash.
pub fn listed(record: &KeyRecord) -> Value {
    serde_json::json!({
        "id": record.id,
        "name": record.name,
        "tenantId": record.tenant_id.to_string(),
        "createdAt": record.created_at,
        "last4": record.last4,
        "autoCreate": record.auto_create,
    })
}

fn envelope(status: StatusCode, message: &str, data: Value) -> Response {
    let body = serde_json::json!({
        "success": true,
        "message": message,
        "data": data,
        "timestamp": crate::api::now_rfc3339(),
    });
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(serde_json::to_vec(&body).unwrap_or_default())
}

async fn principal(request: &Request, state: &AppState) -> Result<Principal, ApiError> {
    if let Some(principal) = request.extensions().get::<Principal>() {
        return Ok(principal.clone());
    }
    state
        .authenticator
        .authenticate_headers(request.headers())
        .await
        .map_err(|error| ApiError::Unauthorized(error.to_string()))
}

/// The `x-tenantid` header, when present (400 when it is not a UUID).
fn tenant_header(request: &Request) -> Result<Option<TenantId>, ApiError> {
    let mut values = request.headers().get_all("x-tenantid").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidTenant("x-tenantid is repeated".into()));
    }
    let text = value
        .to_str()
        .map_err(|_| ApiError::InvalidTenant("x-tenantid must be a UUID".into()))?;
    TenantId::parse(text)
        .map(Some)
        .map_err(|_| ApiError::InvalidTenant("x-tenantid must be a UUID".into()))
}

async fn store(state: &AppState) -> Result<KeyStore, ApiError> {
    let Some(nats) = &state.nats else {
        return Err(ApiError::StreamUnavailable {
            acknowledged: 0,
            total: 1,
        });
    };
    let js = async_nats::jetstream::new(nats.client.clone());
    KeyStore::open(&js, 1).await.map_err(key_error)
}

fn key_error(error: KeyError) -> ApiError {
    match error {
        KeyError::Invalid(reason) => ApiError::InvalidParameter(reason),
        KeyError::NotFound(_) => ApiError::KeyNotFound,
        KeyError::Nats(error) => {
            tracing::warn!(%error, "JOBSTATS_KEYS is not reachable");
            ApiError::StreamUnavailable {
                acknowledged: 0,
                total: 1,
            }
        }
    }
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

#[handler]
pub async fn create_key(request: &Request, body: Body, state: Data<&Arc<AppState>>) -> Response {
    respond(
        async {
            let principal = principal(request, &state).await?;
            let tenant = tenant_header(request)?.ok_or_else(|| {
                ApiError::InvalidTenant("x-tenantid names the tenant the key is for".into())
            })?;
            principal.authorize(&tenant).map_err(ApiError::Forbidden)?;
            let body = body
                .into_bytes_limit(16 * 1024)
                .await
                .map_err(|_| ApiError::PayloadTooLarge(16 * 1024))?;
            let options: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
                CreateKey::default()
            } else {
                serde_json::from_slice(&body).map_err(|error| {
                    ApiError::InvalidParameter(format!(
                        "The body must be {{\"name\": string, \"autoCreate\": boolean}}: {error}"
                    ))
                })?
            };
            let made = crate::keys::generate(
                tenant,
                options.name.as_deref(),
                options.auto_create,
                chrono::Utc::now(),
            )
            .map_err(key_error)?;
            store(&state)
                .await?
                .insert(&made.record)
                .await
                .map_err(key_error)?;
            let mut data = listed(&made.record);
            data["key"] = made.secret.into();
            Ok(envelope(
                StatusCode::CREATED,
                "Ingest key created; it is shown only this once",
                data,
            ))
        }
        .await,
    )
}

#[handler]
pub async fn list_keys(request: &Request, state: Data<&Arc<AppState>>) -> Response {
    respond(
        async {
            let principal = principal(request, &state).await?;
            let tenant = tenant_header(request)?;
            match &tenant {
                Some(tenant) => principal.authorize(tenant).map_err(ApiError::Forbidden)?,
                None if principal.roles.contains(ROLE_SUPER_ADMIN) => {}
                None => {
                    return Err(ApiError::InvalidTenant(
                        "x-tenantid is required: the tenant whose keys to list".into(),
                    ))
                }
            }
            let keys = store(&state)
                .await?
                .list(tenant.as_ref())
                .await
                .map_err(key_error)?;
            let keys: Vec<Value> = keys.iter().map(listed).collect();
            Ok(envelope(
                StatusCode::OK,
                "Ingest keys retrieved successfully",
                serde_json::json!({ "keys": keys }),
            ))
        }
        .await,
    )
}

#[handler]
pub async fn revoke_key(
    request: &Request,
    Path(id): Path<String>,
    state: Data<&Arc<AppState>>,
) -> Response {
    respond(
        async {
            let principal = principal(request, &state).await?;
            let store = store(&state).await?;
            let record = store
                .get(&id)
                .await
                .map_err(key_error)?
                .ok_or(ApiError::KeyNotFound)?;
            // Another tenant's key is answered as if it did not exist.
            if principal.authorize(&record.tenant_id).is_err() {
                return Err(ApiError::KeyNotFound);
            }
            let record = store.revoke(&id).await.map_err(key_error)?;
            Ok(envelope(
                StatusCode::OK,
                "Ingest key revoked",
                listed(&record),
            ))
        }
        .await,
    )
}
