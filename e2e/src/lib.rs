//! Test kit: the real API and consumer code wired to real backends, one isolated campaign per
//! test (every key, row and topic carries the campaign name, so tests share the services).

pub mod binaries;
pub mod browser;
pub mod chaos;
pub mod chaos_page;
pub mod kafka_node;
pub mod redis_cluster;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use coupon_api::AppState;
use coupon_consumer::{ConsumerConfig, Worker};
use coupon_core::broker::{
    KafkaAdmin, LagProbe, PublishTimeouts, Publisher, TopicAdmin, group_lag, wait_drained,
};
use coupon_core::campaign::{Campaign, CampaignSpec, CouponGroup, TopicSpec, consumer_group};
use coupon_core::gate::{GateSnapshot, GateView, RedisGate};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{ProvisionReport, Stores, provision};
use coupon_core::settlement::{SettleOptions, SettleReport, settle};
use coupon_core::verify::{AcceptedLog, VerifyInput, VerifyReport, verify};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Redis Cluster `scripts/services.sh up` starts (three masters on 7100-7102).
pub fn redis_cluster_url() -> String {
    std::env::var("REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/coupons".into())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/coupons".into())
}

/// A campaign name no other test (or earlier run) uses.
/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// A campaign of `(ids, quantity)` groups.
pub fn campaign(name: &str, groups: &[(&str, i64)], partitions: i32) -> Campaign {
    let spec = CampaignSpec {
        coupons: groups
            .iter()
            .map(|(ids, quantity)| CouponGroup {
                ids: ids.parse().expect("valid ids"),
                name: "test coupon {id}".into(),
                discount: 1000,
                quantity: *quantity,
                shards: None,
            })
            .collect(),
        starts_at: None,
        ends_at: None,
        topic: TopicSpec {
            partitions,
            name: None,
        },
    };
    Campaign::new(name.to_string(), spec).expect("valid campaign")
}

/// A one-broker mock cluster with the campaign's topics, and the stack on it.
pub async fn on_mock(
    db: &str,
    campaign: Campaign,
    message_timeout: Duration,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Stack,
) {
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let topic = campaign.topic();
    mock.create_topic(&topic, campaign.spec.topic.partitions, 1)
        .expect("topic");
    mock.create_topic(&coupon_core::campaign::dead_letter_topic(&topic), 1, 1)
        .expect("dlq topic");
    let brokers = mock.bootstrap_servers();
    let opts = StackOptions {
        timeouts: PublishTimeouts {
            message: message_timeout,
            request: message_timeout.mul_f32(0.8),
        },
        ..StackOptions::default()
    };
    let stack = Stack::start_with(
        db,
        &brokers,
        &coupon_core::broker::PreCreatedTopics(brokers.clone()),
        campaign,
        opts,
    )
    .await;
    (mock, stack)
}

/// The real API (as a router) and the real consumer (as a task) for one campaign.
pub struct Stack {
    pub campaign: Campaign,
    pub brokers: String,
    pub gate: Arc<RedisGate>,
    pub ledger: Ledger,
    pub state: AppState,
    pub app: Router,
    pub provisioned: ProvisionReport,
    stop: CancellationToken,
    consumer: Option<tokio::task::JoinHandle<()>>,
    consumer_cfg: ConsumerConfig,
}

pub struct StackOptions {
    pub timeouts: PublishTimeouts,
    pub start_consumer: bool,
    /// The gate's Redis (`redis+cluster://…` for a cluster); default [`redis_url`].
    pub redis_url: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            timeouts: PublishTimeouts::default(),
            start_consumer: true,
            redis_url: None,
        }
    }
}

impl Stack {
    /// Provisions on the real broker (admin API) and starts everything.
    pub async fn start(database_url: &str, campaign: Campaign) -> Self {
        Self::start_on_broker(database_url, campaign, StackOptions::default()).await
    }

    /// The same, with the gate on the local Redis Cluster.
    pub async fn start_on_cluster(database_url: &str, campaign: Campaign) -> Self {
        Self::start_on_redis(database_url, campaign, &redis_cluster_url()).await
    }

    /// As [`Stack::start`], with the gate on this Redis (or `redis+cluster://…`).
    pub async fn start_on_redis(database_url: &str, campaign: Campaign, redis_url: &str) -> Self {
        let opts = StackOptions {
            redis_url: Some(redis_url.to_string()),
            ..StackOptions::default()
        };
        Self::start_on_broker(database_url, campaign, opts).await
    }

    /// Provisions and builds the API, without a consumer.
    pub async fn start_idle(database_url: &str, campaign: Campaign) -> Self {
        let opts = StackOptions {
            start_consumer: false,
            ..StackOptions::default()
        };
        Self::start_on_broker(database_url, campaign, opts).await
    }

    /// On the real broker of [`kafka_brokers`], topics made through its admin API.
    async fn start_on_broker(database_url: &str, campaign: Campaign, opts: StackOptions) -> Self {
        let brokers = kafka_brokers();
        let admin = KafkaAdmin::new(&brokers).expect("admin client");
        Self::start_with(database_url, &brokers, &admin, campaign, opts).await
    }

    pub async fn start_with(
        database_url: &str,
        brokers: &str,
        topics: &dyn TopicAdmin,
        campaign: Campaign,
        opts: StackOptions,
    ) -> Self {
        let redis = opts.redis_url.clone().unwrap_or_else(redis_url);
        let gate = Arc::new(RedisGate::connect(&redis).await.expect("redis"));
        let ledger = Ledger::connect(database_url, 8).await.expect("ledger");
        let provisioned = provision(
            &campaign,
            &Stores {
                gate: gate.as_ref(),
                ledger: &ledger,
                topics,
                kafka: &brokers.into(),
                rebuild_after: Duration::ZERO,
            },
        )
        .await
        .expect("provision");
        let publisher =
            Publisher::new(brokers, &campaign.topic(), opts.timeouts).expect("producer");
        let state = AppState::new(&campaign.name, gate.clone(), publisher);
        assert!(
            state.refresh_catalog().await.expect("catalog"),
            "catalog written"
        );
        let consumer_cfg = ConsumerConfig {
            lag_every: Duration::from_millis(200),
            ..ConsumerConfig::new(brokers, &campaign.name)
        };
        let mut stack = Self {
            app: coupon_api::app(state.clone()),
            state,
            campaign,
            brokers: brokers.to_string(),
            gate,
            ledger,
            provisioned,
            stop: CancellationToken::new(),
            consumer: None,
            consumer_cfg,
        };
        if opts.start_consumer {
            stack.start_consumer(stack.ledger.clone());
        }
        stack
    }

    /// Rebuilds the API on a gate reached through `redis_url` (tests pass a proxy).
    pub async fn route_gate_through(&mut self, redis_url: &str, timeouts: PublishTimeouts) {
        let gate = Arc::new(
            RedisGate::connect(redis_url)
                .await
                .expect("redis via proxy"),
        );
        let publisher =
            Publisher::new(&self.brokers, &self.campaign.topic(), timeouts).expect("producer");
        self.state = AppState::new(&self.campaign.name, gate, publisher);
        assert!(self.state.refresh_catalog().await.expect("catalog"));
        self.app = coupon_api::app(self.state.clone());
    }

    /// Rebuilds the API with an identity check, rate limits and load shedding.
    pub async fn admit_with(&mut self, admission: coupon_api::admission::Admission) {
        let publisher = Publisher::new(
            &self.brokers,
            &self.campaign.topic(),
            PublishTimeouts::default(),
        )
        .expect("producer");
        self.state =
            AppState::with_admission(&self.campaign.name, self.gate.clone(), publisher, admission);
        assert!(self.state.refresh_catalog().await.expect("catalog"));
        self.app = coupon_api::app(self.state.clone());
    }

    /// Starts the consumer writing through `ledger` (tests pass a ledger behind a proxy).
    pub fn start_consumer(&mut self, ledger: Ledger) {
        self.stop = CancellationToken::new();
        let worker = Worker::new(self.consumer_cfg.clone(), ledger, self.stop.clone())
            .expect("consumer")
            .marking_stored(self.gate.clone());
        self.consumer = Some(tokio::spawn(async move {
            worker.run().await.expect("consumer run");
        }));
    }

    pub async fn stop_consumer(&mut self) {
        self.stop.cancel();
        if let Some(h) = self.consumer.take() {
            let _ = h.await;
        }
    }

    /// `POST /api/coupons/{coupon}/issue` with a raw body.
    pub async fn post(
        &self,
        coupon: &str,
        body: &str,
        key: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let headers: Vec<_> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        let (status, json, _) = self.post_with(coupon, body, &headers).await;
        (status, json)
    }

    /// `POST /api/coupons/{coupon}/issue` with headers; the answer's headers too.
    pub async fn post_with(
        &self,
        coupon: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
        let req = Request::post(format!("/api/coupons/{coupon}/issue"))
            .header("content-type", "application/json");
        self.send(req, headers, Body::from(body.to_string())).await
    }

    /// Sends one request through the router: status, JSON body (`Null` if none) and headers.
    async fn send(
        &self,
        mut req: axum::http::request::Builder,
        headers: &[(&str, &str)],
        body: Body,
    ) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let answer_headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json, answer_headers)
    }

    pub async fn issue(&self, coupon: u32, user: u64) -> (StatusCode, serde_json::Value) {
        self.post(
            &coupon.to_string(),
            &format!(r#"{{"userId":{user}}}"#),
            None,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET path` with headers: status, JSON body and the answer's headers.
    pub async fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
        self.send(Request::get(path), headers, Body::empty()).await
    }

    /// The `status` a request's status resource answers (`unknown_request` when 404).
    pub async fn request_status(&self, coupon: u32, id: uuid::Uuid) -> String {
        let (s, j, _) = self
            .get_with(&format!("/api/coupons/{coupon}/requests/{id}"), &[])
            .await;
        match s {
            StatusCode::OK => j["status"].as_str().unwrap_or_default().to_string(),
            _ => j["code"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// Polls a request's status until it is `want`; panics after `within`.
    pub async fn wait_status(&self, coupon: u32, id: uuid::Uuid, want: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.request_status(coupon, id).await;
            if now == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {id} still {now}, not {want}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Total lag of the campaign's consumer group.
    pub async fn lag(&self) -> i64 {
        group_lag(
            &self.brokers,
            &consumer_group(&self.campaign.name),
            &self.campaign.topic(),
        )
        .await
        .expect("lag")
        .iter()
        .map(|l| l.lag)
        .sum()
    }

    /// Waits until the consumers committed everything; panics after `within`.
    pub async fn drain(&self, within: Duration) {
        let group = consumer_group(&self.campaign.name);
        let lag = wait_drained(&self.brokers, &group, &self.campaign.topic(), within)
            .await
            .expect("lag");
        assert_eq!(lag, 0, "lag still {lag} after {within:?}");
    }

    pub async fn verify(&self, accepted: Option<&AcceptedLog>) -> VerifyReport {
        self.verify_spec(&self.campaign, accepted).await
    }

    /// Verifies against another version of the spec (after reprovisioning).
    pub async fn verify_against(&self, spec: &Campaign) -> VerifyReport {
        self.verify_spec(spec, None).await
    }

    async fn verify_spec(&self, spec: &Campaign, accepted: Option<&AcceptedLog>) -> VerifyReport {
        verify(
            &VerifyInput {
                campaign: &self.campaign.name,
                topic: &self.campaign.topic(),
                kafka: &(&self.brokers).into(),
                spec: Some(spec.coupons().iter().map(|c| (c.id, c.quantity)).collect()),
                accepted,
            },
            self.gate.as_ref(),
            &self.ledger,
        )
        .await
        .expect("verify")
    }

    /// One settlement round (what the operator runs on its timer) for reservations at least
    /// `min_age` old.
    pub async fn settle(&self, min_age: Duration) -> SettleReport {
        let lag = LagProbe::new(&self.brokers, &consumer_group(&self.campaign.name)).expect("lag");
        settle(
            &coupon_core::settlement::SettleScope {
                campaign: &self.campaign.name,
                topic: &self.campaign.topic(),
                gate: self.gate.as_ref(),
                ledger: &self.ledger,
                lag: &lag,
            },
            &SettleOptions {
                min_age,
                drain_timeout: Duration::from_secs(30),
                ..SettleOptions::default()
            },
        )
        .await
        .expect("settle")
    }

    pub async fn remaining(&self, coupon: u32) -> i64 {
        self.gate_snapshot(coupon).await.remaining
    }

    pub async fn gate_snapshot(&self, coupon: u32) -> GateSnapshot {
        self.gate
            .snapshot(&self.campaign.name, coupon)
            .await
            .expect("snapshot")
            .expect("coupon provisioned")
    }

    /// Provisions another version of the campaign on the real broker.
    pub async fn reprovision(&self, campaign: &Campaign) -> coupon_core::Result<ProvisionReport> {
        let admin = KafkaAdmin::new(&self.brokers)?;
        provision(
            campaign,
            &Stores {
                gate: self.gate.as_ref(),
                ledger: &self.ledger,
                topics: &admin,
                kafka: &(&self.brokers).into(),
                rebuild_after: Duration::ZERO,
            },
        )
        .await
    }

    pub async fn shutdown(mut self) {
        self.stop_consumer().await;
    }
}

/// Asserts every invariant passed, printing the report otherwise.
pub fn assert_green(report: &VerifyReport) {
    assert!(report.passed(), "invariants failed:\n{}", report.render());
}

/// Request id of a 202 answer.
pub fn request_id(body: &serde_json::Value) -> uuid::Uuid {
    body["requestId"]
        .as_str()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .unwrap_or_else(|| panic!("no request id in {body}"))
}

/// Asserts the status and the JSON `code` of a refusal.
pub fn assert_refused(answer: &(StatusCode, serde_json::Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert!(
        answer.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        answer.1
    );
}

/// A TCP proxy that can cut every connection and refuse new ones: a database "going away".
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let target = target.to_string();
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused by closing
                }
                let target = target.clone();
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    /// `url` with its host:port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("url with scheme");
        let (auth_host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let auth = auth_host
            .rsplit_once('@')
            .map(|(a, _)| format!("{a}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}{}/{path}", self.addr)
    }

    /// Drops every live connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
