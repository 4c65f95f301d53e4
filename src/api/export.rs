//! The executions export: `?format=ndjson|csv` on the executions endpoint streams every
//! execution matching the filters, from one snapshot of the read model, in chunks, so memory
//! stays constant however long the history is. A blocking task reads SQLite and a bounded
//! channel carries the chunks: a slow client slows the reading, it does not buffer it.

use bytes::Bytes;
use poem::Response;
use poem_openapi::registry::{MetaMediaType, MetaResponses, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::ApiResponse;

use crate::events::{JobName, TenantId};
use crate::store::{ExecutionSummary, ExecutionsQuery, ReadPool, StoreError};

use super::errors::ApiError;
use super::stats::{recent_execution, RecentExecution};
use super::AppState;

/// How big a chunk grows before it is sent.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the reader and the client.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The export formats of `?format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line, each as the executions page shows it.
    Ndjson,
    /// A header row, then one row per execution (RFC 4180 quoting).
    Csv,
}

impl ExportFormat {
    /// `format`'s value: `None` for the JSON page (absent or `json`).
    pub fn parse(value: Option<&str>) -> Result<Option<Self>, String> {
        match value {
            None | Some("json") => Ok(None),
            Some("ndjson") => Ok(Some(ExportFormat::Ndjson)),
            Some("csv") => Ok(Some(ExportFormat::Csv)),
            Some(_) => Err("must be json, ndjson or csv".into()),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8; header=present",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Csv => "csv",
        }
    }
}

/// The CSV columns: the page's fields, in its order.
const CSV_HEADER: [&str; 9] = [
    "id",
    "status",
    "enqueuedAt",
    "startedAt",
    "completedAt",
    "durationMs",
    "itemsProcessed",
    "error",
    "exitCode",
];

fn csv_record(execution: &RecentExecution) -> [String; 9] {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let number = |value: Option<i64>| value.map(|v| v.to_string()).unwrap_or_default();
    [
        execution.id.clone(),
        execution.status.clone(),
        text(&execution.enqueued_at),
        text(&execution.started_at),
        text(&execution.completed_at),
        number(execution.duration_ms),
        execution
            .items_processed
            .map(|v| v.to_string())
            .unwrap_or_default(),
        text(&execution.error),
        execution
            .exit_code
            .map(|v| v.to_string())
            .unwrap_or_default(),
    ]
}

/// Appends one execution to `chunk` in `format`.
fn write_row(format: ExportFormat, chunk: &mut Vec<u8>, row: &ExecutionSummary) {
    let execution = recent_execution(row);
    match format {
        ExportFormat::Ndjson => {
            use poem_openapi::types::ToJSON;
            let line = execution.to_json().unwrap_or_default().to_string();
            chunk.extend_from_slice(line.as_bytes());
            chunk.push(b'\n');
        }
        ExportFormat::Csv => csv_line(chunk, &csv_record(&execution)),
    }
}

/// One CSV record, quoted as RFC 4180 says (by the csv crate), appended to `chunk`.
fn csv_line<const N: usize>(chunk: &mut Vec<u8>, record: &[impl AsRef<[u8]>; N]) {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::CRLF)
        .buffer_capacity(1024)
        .from_writer(chunk);
    // Writing to memory cannot fail.
    let _ = writer.write_record(record);
    let _ = writer.flush();
}

/// Every execution of `query` in `format`, handed to `emit` in chunks of about 64 KiB (the
/// CSV header first); `emit` returns false to stop. `None`: no such job. Blocking: SQLite.
pub fn export_chunks(
    readers: &ReadPool,
    tenant: &TenantId,
    job: &JobName,
    query: &ExecutionsQuery,
    format: ExportFormat,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<Option<u64>, StoreError> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 1024);
    if format == ExportFormat::Csv {
        csv_line(&mut chunk, &CSV_HEADER);
    }
    let mut open = true;
    let exported = readers.export_executions(tenant, job, query, |row| {
        write_row(format, &mut chunk, &row);
        if chunk.len() >= CHUNK_BYTES {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES + 1024));
            open = emit(full);
        }
        open
    })?;
    if open && exported.is_some() {
        emit(chunk);
    }
    Ok(exported)
}

/// The streaming answer for one job's executions. The job must exist (checked by the caller
/// before, so a 404 is the JSON envelope).
pub fn stream(
    state: &AppState,
    tenant: TenantId,
    job: JobName,
    query: ExecutionsQuery,
    format: ExportFormat,
) -> Result<Response, ApiError> {
    let readers = state.readers.get();
    let (chunks, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
    let filename = format!("{}-executions.{}", job.as_str(), format.extension());
    tokio::task::spawn_blocking(move || {
        let exported = export_chunks(&readers, &tenant, &job, &query, format, |chunk| {
            // False when the client has gone: reading stops.
            chunks.blocking_send(Ok(Bytes::from(chunk))).is_ok()
        });
        // The client sees a cut-off body rather than a silently short file.
        if let Err(e) = exported {
            tracing::error!(error = %e, "executions export failed");
            let _ = chunks.blocking_send(Err(std::io::Error::other("export failed")));
        }
    });
    let body = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Ok(Response::builder()
        .content_type(format.content_type())
        .header(
            "content-disposition",
            format!("attachment; filename=\"{filename}\""),
        )
        .body(poem::Body::from_bytes_stream(body)))
}

/// The executions endpoint's answer: the JSON page (every status it documents), or an export
/// stream, documented as the 200 answer's other media types.
pub enum ExecutionsAnswer<Page> {
    Page(Page),
    Export(Response),
}

impl<Page: ApiResponse> ApiResponse for ExecutionsAnswer<Page> {
    const BAD_REQUEST_HANDLER: bool = Page::BAD_REQUEST_HANDLER;

    fn meta() -> MetaResponses {
        let mut meta = Page::meta();
        for response in &mut meta.responses {
            if response.status == Some(200) {
                for format in [ExportFormat::Ndjson, ExportFormat::Csv] {
                    response.content.push(MetaMediaType {
                        content_type: format.content_type(),
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
                    });
                }
            }
        }
        meta
    }

    fn register(registry: &mut Registry) {
        Page::register(registry);
    }

    fn from_parse_request_error(err: poem::Error) -> Self {
        ExecutionsAnswer::Page(Page::from_parse_request_error(err))
    }
}

impl<Page: poem::IntoResponse> poem::IntoResponse for ExecutionsAnswer<Page> {
    fn into_response(self) -> Response {
        match self {
            ExecutionsAnswer::Page(page) => page.into_response(),
            ExecutionsAnswer::Export(response) => response,
        }
    }
}
