//! A fake API server for the operator's tests: an in-memory store behind a tower service that
//! records every request and answers like the API server where the tests depend on it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::Client;
use serde_json::{Value, json};

pub const NS: &str = "default";

fn conflict(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": format!("{what}: conflict")})
}

#[derive(Default)]
pub struct Store {
    objects: BTreeMap<String, Value>,
    log: Vec<(Method, String, Value)>,
}

#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<Store>>);

impl FakeApi {
    pub fn client(&self) -> Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        Client::new(svc, NS)
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut store = self.0.lock().expect("store");
        store.log.push((method.clone(), path.clone(), body.clone()));
        let reply = |code: StatusCode, v: &Value| {
            Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())))
                .expect("response")
        };
        match method {
            Method::GET => match store.objects.get(&path) {
                Some(v) => reply(StatusCode::OK, v),
                None => reply(
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
                ),
            },
            Method::POST if path.contains("/events") => reply(StatusCode::CREATED, &body),
            Method::POST => {
                let key = format!(
                    "{path}/{}",
                    body["metadata"]["name"].as_str().unwrap_or_default()
                );
                if store.objects.contains_key(&key) {
                    return reply(StatusCode::CONFLICT, &conflict(&key));
                }
                let mut obj = body;
                obj["metadata"]["resourceVersion"] = json!("1");
                store.objects.insert(key, obj.clone());
                reply(StatusCode::CREATED, &obj)
            }
            // Replace with optimistic concurrency on resourceVersion, as the API server does.
            Method::PUT => {
                let live_rv = store
                    .objects
                    .get(&path)
                    .map(|o| o["metadata"]["resourceVersion"].clone());
                if live_rv != Some(body["metadata"]["resourceVersion"].clone()) {
                    return reply(StatusCode::CONFLICT, &conflict(&path));
                }
                let next: u64 = body["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
                    + 1;
                let mut obj = body;
                obj["metadata"]["resourceVersion"] = json!(next.to_string());
                store.objects.insert(path, obj.clone());
                reply(StatusCode::OK, &obj)
            }
            Method::PATCH if content_type.contains("json-patch") => {
                let mut obj = store.objects.get(&path).cloned().unwrap_or(Value::Null);
                let patch: json_patch::Patch = serde_json::from_value(body).expect("json patch");
                json_patch::patch(&mut obj, &patch).expect("patch applies");
                store.objects.insert(path, obj.clone());
                reply(StatusCode::OK, &obj)
            }
            Method::PATCH if path.ends_with("/status") => {
                let base = path.trim_end_matches("/status").to_string();
                let mut obj = store.objects.get(&base).cloned().unwrap_or(Value::Null);
                obj["status"] = body["status"].clone();
                store.objects.insert(base, obj.clone());
                reply(StatusCode::OK, &obj)
            }
            Method::PATCH => {
                store.objects.insert(path, body.clone());
                reply(StatusCode::OK, &body)
            }
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, &Value::Null),
        }
    }

    pub fn put(&self, path: &str, v: Value) {
        self.0.lock().expect("store").objects.insert(path.into(), v);
    }

    pub fn get(&self, path: &str) -> Value {
        self.0
            .lock()
            .expect("store")
            .objects
            .get(path)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The writes since the last call: (method, path), events collapsed to their reason.
    pub fn take_writes(&self) -> Vec<String> {
        let mut store = self.0.lock().expect("store");
        let log = std::mem::take(&mut store.log);
        log.into_iter()
            .filter(|(m, _, _)| *m != Method::GET)
            .map(|(m, p, b)| {
                if p.contains("/events") {
                    format!("EVENT {}", b["reason"].as_str().unwrap_or("?"))
                } else {
                    format!("{m} {}", p.replace(&format!("/namespaces/{NS}/"), "/"))
                }
            })
            .collect()
    }
}
