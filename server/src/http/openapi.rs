//! The OpenAPI 3.1 document, derived from the handlers' `#[utoipa::path]` attributes and the
//! `pile-api` types they serialise.
//!
//! There is no route list: `super::routes` registers each handler with `utoipa_axum`'s
//! `routes!`, which puts the route into the router and its operation into the document in one
//! step. What the layers around the handlers add is documented here, next to the layer's
//! effect: every operation behind the API-key check gets the `ApiKey` security requirement
//! and the 401 / 429 / 500 answers of that stack; every operation with a request body gets
//! 413. Handler-specific answers (400, 404, 409, 503) are in each handler's attribute.

use std::sync::OnceLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pilekit gateway API",
        description = "The gateway's HTTP API (`shared/design/API.md`). Every JSON answer is an \
            envelope `{code, message, data, request_id, timestamp}`: `code` 0 on success, else \
            the HTTP status, with `data` null. Money in integer fen, energy in kWh (`total_kwh`) \
            or Wh (`*_wh`), times in seconds, timestamps in Unix seconds. A query parameter given \
            twice is a 400 naming it; one given empty (`?status=`) counts as absent.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&ApiKeyScheme),
    components(schemas(ErrorEnvelope)),
    tags(
        (name = "devices", description = "Device control and state"),
        (name = "orders", description = "Orders and their progress"),
        (name = "admin", description = "Operations: figures, consistency, frames"),
        (name = "events", description = "Webhook dead letters and the live event stream"),
        (name = "operations", description = "Health, readiness, metrics, this document (no key)"),
    )
)]
struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key of the gateway (`--api-key`, or the one generated at first start)",
            ))),
        );
    }
}

/// The name of the security scheme.
const API_KEY: &str = "ApiKey";

/// The document's skeleton: info, tags, the security scheme and the error envelope.
pub(super) fn skeleton() -> Document {
    ApiDoc::openapi()
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build(),
    )
}

fn operations(doc: &mut Document) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.options.as_mut(),
            item.head.as_mut(),
            item.patch.as_mut(),
            item.trace.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}

fn add(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description));
}

/// Documents what `auth` and the store add to every operation of the keyed router.
pub(super) fn document_keyed(doc: &mut Document) {
    for op in operations(doc) {
        op.security = Some(vec![SecurityRequirement::new(
            API_KEY,
            Vec::<String>::new(),
        )]);
        add(op, 401, "Missing or wrong `X-Api-Key`");
        add(
            op,
            429,
            "The key's rate limit (`--rate-limit` requests per second) is used up",
        );
        add(
            op,
            500,
            "Internal error (the detail is in the gateway's log)",
        );
    }
}

/// Documents what the body limit adds, and sorts the answers by status.
pub(super) fn document_common(doc: &mut Document) {
    for op in operations(doc) {
        if op.request_body.is_some() {
            add(op, 413, "The request body is larger than `--body-limit`");
        }
        let mut sorted: Vec<_> = std::mem::take(&mut op.responses.responses)
            .into_iter()
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        op.responses.responses.extend(sorted);
    }
}

/// The OpenAPI document of every route the gateway serves, as JSON.
pub fn openapi_document() -> Value {
    let doc = routes(|keyed| keyed).1;
    let mut value = serde_json::to_value(&doc).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document does not serialise");
        Value::Null
    });
    // utoipa composes a generic type's argument inline (`Envelope<OrderRef>` carries a copy of
    // `OrderRef`); a code generator would then make one class per copy. Point the copies at
    // the named schemas instead.
    reference_named_schemas(&mut value);
    value
}

/// Replaces every inline schema that equals a named component schema with a `$ref` to it,
/// until nothing changes (a component's copies can refer to copies of others).
fn reference_named_schemas(doc: &mut Value) {
    for _ in 0..8 {
        let before = doc.clone();
        reference_named_schemas_once(doc);
        if *doc == before {
            return;
        }
    }
}

fn reference_named_schemas_once(doc: &mut Value) {
    let named: Vec<(String, Value)> = match doc.pointer("/components/schemas") {
        Some(Value::Object(schemas)) => schemas
            .iter()
            .filter(|(_, s)| {
                ["properties", "enum", "oneOf"]
                    .iter()
                    .any(|k| s.get(*k).is_some())
            })
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect(),
        _ => return,
    };
    // Inside out: a copy whose own inner copies became references then equals its component.
    fn walk(v: &mut Value, named: &[(String, Value)]) {
        match v {
            Value::Object(map) => map.values_mut().for_each(|x| walk(x, named)),
            Value::Array(items) => items.iter_mut().for_each(|x| walk(x, named)),
            _ => return,
        }
        if let Some((name, _)) = named.iter().find(|(_, s)| s == v) {
            *v = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
        }
    }
    if let Some(Value::Object(schemas)) = doc.pointer_mut("/components/schemas") {
        // A component's own root is not replaced, only what is inside it.
        for schema in schemas.values_mut() {
            if let Value::Object(map) = schema {
                map.values_mut().for_each(|x| walk(x, &named));
            }
        }
    }
    if let Some(paths) = doc.get_mut("paths") {
        walk(paths, &named);
    }
}

/// The document as served, built once.
fn document_json() -> &'static Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(serde_json::to_vec(&openapi_document()).unwrap_or_default()))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of every route (not enveloped)",
         content_type = "application/json", body = Object),
    )
)]
pub(super) async fn openapi() -> Response {
    (
        [("content-type", "application/json")],
        document_json().clone(),
    )
        .into_response()
}
