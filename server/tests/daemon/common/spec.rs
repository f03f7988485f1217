//! The committed OpenAPI document (openapi/openapi.json) as a validator of what the tests send
//! and receive. The document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12; each schema
//! the tests need is compiled once, wrapped as `{"components": <doc.components>, "allOf": [S]}`
//! so that its `#/components/schemas/...` references resolve.
//!
//! Which schema applies is looked up in the document's `paths`, never hard-coded: the concrete
//! path is matched against the path templates, then method, status and content type select the
//! schema. Answers the document cannot list per operation are checked against the rules of the
//! whole API instead: a path no template matches answers 404, a method a template lacks answers
//! 405, the read-only TCP listener answers 403 to mutations, the metrics listener 404 to anything
//! but /metrics; each as a `Problem`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::Validator;
use serde_json::{Value, json};

/// Which of the daemon's listeners answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The unix socket: every route.
    Socket,
    /// Loopback TCP: the same routes, read-only (403 for anything but GET and HEAD).
    ReadOnly,
    /// `--metrics-listen`: `/metrics` alone, 404 for anything else.
    MetricsOnly,
}

/// Routes the daemon serves outside its API document (Swagger UI and the document itself).
fn outside_the_document(path: &str) -> bool {
    path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/")
}

pub const PROBLEM_JSON: &str = "application/problem+json";

pub struct Spec {
    doc: Value,
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

/// The document, read once per test process.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(committed_path())
            .unwrap_or_else(|e| panic!("reading {}: {e}", committed_path().display()));
        let doc: Value = serde_json::from_str(&text).expect("openapi/openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."), "an OpenAPI 3.x document");
        Spec { doc, validators: Mutex::new(HashMap::new()) }
    })
}

pub fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// `application/json; charset=utf-8` -> `application/json`.
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn is_json(content_type: &str) -> bool {
    content_type == "application/json" || content_type.ends_with("+json")
}

impl Spec {
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The compiled schema found at `pointer` (a JSON pointer into the document).
    pub fn validator(&self, pointer: &str) -> Arc<Validator> {
        let mut cache = self.validators.lock().unwrap();
        if let Some(v) = cache.get(pointer) {
            return Arc::clone(v);
        }
        let schema =
            self.doc.pointer(pointer).unwrap_or_else(|| panic!("openapi.json has nothing at {pointer}")).clone();
        let root = json!({ "components": self.doc["components"], "allOf": [schema] });
        let v = Arc::new(
            jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema at {pointer} does not compile: {e}")),
        );
        cache.insert(pointer.to_string(), Arc::clone(&v));
        v
    }

    /// The validator of `#/components/schemas/{name}`.
    pub fn component(&self, name: &str) -> Arc<Validator> {
        assert!(self.doc["components"]["schemas"].get(name).is_some(), "no component schema {name}");
        self.validator(&format!("/components/schemas/{name}"))
    }

    /// Every reason `instance` does not match the schema at `pointer` (empty: it matches).
    pub fn errors(&self, pointer: &str, instance: &Value) -> Vec<String> {
        let v = self.validator(pointer);
        v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
    }

    /// The path template of the document that `path` (query string allowed) falls under.
    pub fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object().expect("paths");
        paths
            .keys()
            .filter(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                ts.len() == segments.len()
                    && ts
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| if t.starts_with('{') && t.ends_with('}') { !s.is_empty() } else { t == s })
            })
            // A literal segment beats a parameter, should two templates match.
            .max_by_key(|t| t.split('/').filter(|s| !s.starts_with('{')).count())
            .cloned()
    }

    /// The pointer of the request body schema of `method path`, if the operation takes one.
    pub fn request_schema(&self, method: &str, path: &str) -> Option<String> {
        let t = self.template(path)?;
        let m = method.to_ascii_lowercase();
        let content = self.doc["paths"][&t][&m]["requestBody"]["content"].as_object()?;
        content
            .contains_key("application/json")
            .then(|| format!("/paths/{}/{m}/requestBody/content/{}/schema", escape(&t), escape("application/json")))
    }

    /// Reasons a request body breaks the document (empty: it is valid).
    pub fn request_errors(&self, method: &str, path: &str, body: &Value) -> Vec<String> {
        match self.request_schema(method, path) {
            Some(pointer) => self.errors(&pointer, body),
            None => vec![format!("the document defines no JSON request body for {method} {path}")],
        }
    }

    /// Panics unless `body` is a valid request body of `method path`.
    #[track_caller]
    pub fn check_request(&self, method: &str, path: &str, body: &Value) {
        let errors = self.request_errors(method, path, body);
        assert!(errors.is_empty(), "request {method} {path} breaks openapi.json: {errors:?}\nbody: {body}");
    }

    /// Panics unless this answer is what openapi.json documents for `method path` (see the module
    /// doc for answers no single operation lists), as `listener` served it. Returns the pointer of the schema the body was checked against, if any.
    #[track_caller]
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        listener: Listener,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Option<String> {
        let route = path.split('?').next().unwrap_or(path);
        if outside_the_document(route) {
            return None;
        }
        let what = || format!("{method} {path} -> {status} {content_type:?}: {}", String::from_utf8_lossy(body));
        let m = method.to_ascii_lowercase();
        let problem = |why: &str| -> Option<String> {
            let pointer = "/components/schemas/Problem".to_string();
            self.check_body(&pointer, PROBLEM_JSON, status, content_type, body, &what, why);
            Some(pointer)
        };
        if listener == Listener::ReadOnly && status == 403 && !matches!(method, "GET" | "HEAD") {
            return problem("the read-only listener refuses mutations with a 403 Problem");
        }
        if listener == Listener::MetricsOnly && route != "/metrics" {
            assert_eq!(status, 404, "the metrics listener serves /metrics alone: {}", what());
            return problem("the metrics listener answers a 404 Problem to anything but /metrics");
        }
        let Some(t) = self.template(path) else {
            assert_eq!(status, 404, "a path outside the document must answer 404: {}", what());
            return problem("an unknown route answers a 404 Problem");
        };
        let op = &self.doc["paths"][&t][&m];
        if op.is_null() {
            assert_eq!(status, 405, "a method {t} lacks must answer 405: {}", what());
            return problem("a method the route lacks answers a 405 Problem");
        }
        let key = status.to_string();
        let Some(response) = op["responses"].get(&key) else {
            panic!("undocumented answer: openapi.json lists no {status} for {method} {t}: {}", what());
        };
        let content = response["content"].as_object().filter(|c| !c.is_empty());
        let Some(content) = content else {
            assert!(body.is_empty(), "openapi.json documents no body for {status} of {method} {t}: {}", what());
            return None;
        };
        let got = content_type.map(essence).unwrap_or_default();
        assert!(
            content.contains_key(&got),
            "content type {got:?} is not among those documented ({:?}): {}",
            content.keys().collect::<Vec<_>>(),
            what()
        );
        let pointer = format!("/paths/{}/{m}/responses/{key}/content/{}/schema", escape(&t), escape(&got));
        self.check_body(&pointer, &got, status, content_type, body, &what, "documented");
        Some(pointer)
    }

    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    fn check_body(
        &self,
        pointer: &str,
        expected_type: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
        what: &dyn Fn() -> String,
        why: &str,
    ) {
        let got = content_type.map(essence).unwrap_or_default();
        assert_eq!(got, expected_type, "content type ({why}): {}", what());
        if is_json(&got) {
            let value: Value =
                serde_json::from_slice(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", what()));
            let errors = self.errors(pointer, &value);
            assert!(errors.is_empty(), "answer breaks openapi.json schema {pointer}: {errors:?}\n{}", what());
            if got == PROBLEM_JSON {
                assert_eq!(value["status"], status, "a Problem's status must be the HTTP status: {}", what());
            }
        } else {
            let text = std::str::from_utf8(body).unwrap_or_else(|_| panic!("body is not UTF-8: {}", what()));
            let errors = self.errors(pointer, &Value::String(text.to_string()));
            assert!(errors.is_empty(), "answer breaks openapi.json schema {pointer}: {errors:?}\n{}", what());
        }
    }
}
