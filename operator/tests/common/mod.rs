//! A fake API server for the operator's tests: an in-memory store behind a tower service that
//! records every request and answers like the API server where the tests depend on it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coupon_operator::context::Context;
use coupon_operator::controller::reconcile;
use coupon_operator::crd::CouponCampaign;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::Client;
use serde_json::{Value, json};

pub mod campaigns;
pub mod cluster;
pub mod operator_process;
pub mod pods;
pub mod tools;

pub const NS: &str = "default";

/// The tests' delivery deadline: settlement and gate rebuilds wait this long.
pub const SETTLE_AFTER: std::time::Duration = std::time::Duration::from_millis(300);

fn conflict(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": format!("{what}: conflict")})
}

#[derive(Default)]
pub struct Store {
    objects: BTreeMap<String, Value>,
    log: Vec<(Method, String, Value)>,
    /// Every request ever made, as (method, path?query); never cleared.
    calls: Vec<(Method, String)>,
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
        let query = req.uri().query().unwrap_or("").to_string();
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
        store
            .calls
            .push((method.clone(), format!("{path}?{query}")));
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
            // Server-side apply: an apply that creates the object needs RBAC's `create` too
            // (the real authorizer refused the chart that granted only `patch`).
            Method::PATCH => {
                if !store.objects.contains_key(&path) {
                    store.calls.push((Method::POST, format!("{path}?{query}")));
                }
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

    /// Every request so far as `(apiGroup, resource[/subresource], verb)`, the terms of RBAC.
    pub fn rbac_calls(&self) -> Vec<(String, String, String)> {
        let store = self.0.lock().expect("store");
        store
            .calls
            .iter()
            .map(|(method, url)| {
                let (path, query) = url.split_once('?').unwrap_or((url, ""));
                let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
                // /api/v1/... is the core group; /apis/{group}/{version}/... the others.
                let (group, rest) = if parts.first() == Some(&"api") {
                    ("", &parts[2..])
                } else {
                    (parts[1], &parts[3..])
                };
                let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
                    &rest[2..]
                } else {
                    rest
                };
                let resource = match rest.get(2) {
                    Some(sub) => format!("{}/{sub}", rest[0]),
                    None => rest[0].to_string(),
                };
                let named = rest.len() > 1;
                let verb = match *method {
                    Method::GET if query.contains("watch=true") => "watch",
                    Method::GET if named => "get",
                    Method::GET => "list",
                    Method::POST => "create",
                    Method::PUT => "update",
                    Method::PATCH => "patch",
                    Method::DELETE => "delete",
                    _ => "unknown",
                };
                (group.to_string(), resource, verb.to_string())
            })
            .collect()
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

// A fake cluster with one campaign whose connection Secret points at the real services.

pub fn cc_path(name: &str) -> String {
    format!("/apis/coupons.fcfs.dev/v1alpha1/namespaces/{NS}/couponcampaigns/{name}")
}

pub fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fake cluster holding the connection Secret and one campaign.
pub fn cluster(name: &str, spec: Value) -> FakeApi {
    let api = FakeApi::default();
    api.put(
        &format!("/api/v1/namespaces/{NS}/secrets/coupon-backends"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "coupon-backends", "namespace": NS}, "data": {
            "REDIS_URL": b64(&coupon_e2e::redis_url()),
            "KAFKA_BROKERS": b64(&coupon_e2e::kafka_brokers()),
            "DATABASE_URL": b64(&coupon_e2e::postgres_url()),
        }}),
    );
    api.put(
        &cc_path(name),
        json!({"apiVersion": "coupons.fcfs.dev/v1alpha1", "kind": "CouponCampaign",
               "metadata": {"name": name, "namespace": NS, "uid": "0c1d2e3f-0000-4000-8000-000000000001", "generation": 1, "finalizers": null},
               "spec": spec}),
    );
    api
}

pub async fn run(api: &FakeApi, ctx: &Arc<Context>, name: &str) {
    let cc: CouponCampaign = serde_json::from_value(api.get(&cc_path(name))).expect("campaign");
    reconcile(Arc::new(cc), ctx.clone())
        .await
        .expect("reconcile");
}

/// A cluster whose campaign has been reconciled twice (finalizer, then everything), writes cleared.
pub async fn provisioned(name: &str, spec: Value) -> (FakeApi, Arc<Context>) {
    let api = cluster(name, spec);
    let ctx = Arc::new(Context::new(api.client()).with_settle_after(SETTLE_AFTER));
    run(&api, &ctx, name).await;
    run(&api, &ctx, name).await;
    api.take_writes();
    (api, ctx)
}

/// The real gate and ledger the fake cluster's Secret points at.
pub async fn backends() -> (coupon_core::gate::RedisGate, coupon_core::ledger::Ledger) {
    let gate = coupon_core::gate::RedisGate::connect(&coupon_e2e::redis_url())
        .await
        .expect("redis");
    let ledger = coupon_core::ledger::Ledger::connect(&coupon_e2e::postgres_url(), 1)
        .await
        .expect("ledger");
    (gate, ledger)
}

/// splitmix64: a cheap deterministic mix for the load tests' (coupon, user) picks.
pub fn mix(i: usize, seed: u64) -> u64 {
    let mut z = (i as u64)
        .wrapping_add(seed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Adds one load's request ids to another's.
pub fn absorb(into: &mut coupon_core::verify::AcceptedLog, from: coupon_core::verify::AcceptedLog) {
    into.accepted.extend(from.accepted);
    into.ambiguous.extend(from.ambiguous);
}
