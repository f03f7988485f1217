//! The API's error answers and its strict JSON body extractor, in one place: every handler
//! answers its errors as an [`ApiError`], an RFC 9457 problem document with a stable `type`.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use enipool_api::{self as api, FieldError, problem};
use enipool_storage::LedgerError;
use serde::de::DeserializeOwned;

use crate::app::LedgerCallError;

/// An error answer: status, stable problem type, and what went wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    problem_type: &'static str,
    title: &'static str,
    detail: String,
    field: Option<String>,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, problem_type: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, problem_type, title, detail: detail.into(), field: None, retry_after: None }
    }

    /// Asks the client to retry after `after` (the `Retry-After` header).
    pub fn with_retry_after(self, after: Duration) -> Self {
        ApiError { retry_after: Some(after), ..self }
    }

    /// Names the offending field (`field` in the problem document).
    pub fn with_field(self, field: Option<String>) -> Self {
        ApiError { field, ..self }
    }

    pub(crate) fn field(status: StatusCode, e: FieldError) -> Self {
        ApiError {
            field: Some(e.field.to_string()),
            ..ApiError::new(status, problem::INVALID_FIELD, "Invalid field", e.to_string())
        }
    }

    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, problem::INTERNAL, "Internal error", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, problem::NOT_FOUND, "Not found", detail)
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Poisoned(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                problem::LEDGER_FAILED,
                "Ledger failed",
                format!("{e}; nothing is leased or released until then"),
            ),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<LedgerCallError> for ApiError {
    fn from(e: LedgerCallError) -> Self {
        match e {
            LedgerCallError::Ledger(e) => e.into(),
            LedgerCallError::TaskDied(e) => ApiError::internal(e.to_string()),
        }
    }
}

impl ApiError {
    pub(crate) fn shutting_down() -> Self {
        ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                problem::SHUTTING_DOWN,
                "Shutting down",
                "enipoold is shutting down; try again shortly",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::Problem {
            problem_type: self.problem_type.into(),
            title: self.title.into(),
            status: self.status.as_u16(),
            detail: self.detail,
            field: self.field,
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A JSON body read strictly: size-capped (`LIMIT` bytes), JSON content type, and an error
/// naming the field.
#[derive(Debug)]
pub struct ApiJson<T, const LIMIT: usize = { api::MAX_BODY_BYTES }>(pub T);

impl<T: DeserializeOwned, S: Send + Sync, const LIMIT: usize> FromRequest<S> for ApiJson<T, LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    problem::UNSUPPORTED_MEDIA_TYPE,
                    "Unsupported media type",
                    format!("body must be application/json, not {ct:?}"),
                ));
            }
        }
        let bytes: Bytes = axum::body::to_bytes(req.into_body(), LIMIT).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                problem::BODY_TOO_LARGE,
                "Body too large",
                format!("request bodies are limited to {LIMIT} bytes"),
            )
        })?;
        let malformed = |message: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                problem::INVALID_BODY,
                "Malformed JSON",
                format!("request body is not valid JSON: {message}"),
            )
        };
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(&mut *de) {
            // Only whitespace may follow the value: `{...} x` is not a JSON document.
            Ok(v) => de.end().map(|()| ApiJson(v)).map_err(|e| malformed(e.to_string())),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.to_string();
                if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                    return Err(malformed(message));
                }
                // serde reports a missing field at its parent's path (name the field); an
                // unknown field's path already ends with its name.
                let missing =
                    message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()).map(str::to_string);
                let field = match (missing, path.as_str()) {
                    (Some(f), "." | "") => f,
                    (Some(f), parent) => format!("{parent}.{f}"),
                    (None, p) => p.to_string(),
                };
                Err(ApiError {
                    field: Some(field.clone()),
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        problem::INVALID_FIELD,
                        "Invalid field",
                        format!("{field}: {message}"),
                    )
                })
            }
        }
    }
}
