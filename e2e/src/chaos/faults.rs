//! Injecting each fault: processes killed and restarted, the database cut, Redis restarted
//! empty, the broker killed or made to misbehave on librdkafka's mock cluster.

use anyhow::Context as _;
use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::time::Instant;

use crate::Proxy;
use crate::kafka_node::KafkaNode;

use super::*;

/// What the faults act on.
pub(super) struct Targets<'a> {
    pub(super) api: &'a mut Process,
    pub(super) consumer: &'a mut Process,
    pub(super) redis: &'a mut Process,
    pub(super) proxy: &'a Proxy,
    pub(super) mock: Option<&'a Mock>,
    pub(super) kafka: Option<&'a mut KafkaNode>,
}

pub(super) async fn inject(
    fault: Fault,
    clock: &Clock,
    t: &mut Targets<'_>,
    http: &reqwest::Client,
    api_addr: &str,
) -> anyhow::Result<()> {
    let Targets {
        api,
        consumer,
        redis,
        proxy,
        mock,
        kafka,
    } = t;
    if fault.on_broker() {
        let mock = mock.context("a broker fault needs the mock cluster")?;
        return inject_broker(fault, clock, mock).await;
    }
    match fault {
        Fault::KillApi => {
            api.kill9();
            clock.note("kill -9 coupon-api");
            tokio::time::sleep(Duration::from_millis(500)).await;
            api.start()?;
            wait_ready(http, api_addr, Duration::from_secs(30)).await?;
            clock.note("coupon-api restarted and ready");
        }
        Fault::KillConsumer => {
            consumer.kill9();
            clock.note("kill -9 coupon-consumer");
            // Back within the dead member's session, as a pod restarted at once would be: the
            // group must rebalance it in.
            tokio::time::sleep(Duration::from_millis(500)).await;
            consumer.start()?;
            clock.note("coupon-consumer restarted");
        }
        Fault::CutDatabase => {
            proxy.cut();
            clock.note("database cut: every connection dropped, new ones refused");
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.restore();
            clock.note("database back");
        }
        Fault::KillBroker => {
            let node = kafka
                .as_deref_mut()
                .context("kill-broker needs the private Kafka node")?;
            node.kill9().await;
            clock.note("kill -9 the Kafka broker");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let restart = Instant::now();
            node.restart().await?;
            clock.note(format!(
                "Kafka broker restarted on its log directory, serving after {:.1} s",
                restart.elapsed().as_secs_f64()
            ));
        }
        Fault::RestartRedis => {
            redis.kill9();
            clock.note("kill -9 redis-server");
            redis.start()?;
            clock.note("redis-server restarted empty");
        }
        _ => {}
    }
    Ok(())
}

pub(super) async fn inject_broker(fault: Fault, clock: &Clock, mock: &Mock) -> anyhow::Result<()> {
    let broker = |r: rdkafka::error::KafkaResult<()>| r.context("mock cluster");
    match fault {
        Fault::BrokerDown => {
            broker(mock.broker_down(1))?;
            clock.note("broker down");
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker(mock.broker_up(1))?;
            clock.note("broker back");
        }
        Fault::BrokerRefuses => {
            let mut errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 40];
            errors.push(RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
            mock.request_errors(RDKafkaApiKey::Produce, &errors);
            clock.note("broker refusing produce requests (not enough replicas)");
            tokio::time::sleep(Duration::from_secs(2)).await;
            mock.clear_request_errors(RDKafkaApiKey::Produce);
            clock.note("broker accepting again");
        }
        Fault::BrokerSlow => {
            broker(mock.broker_round_trip_time(1, Duration::from_millis(2500)))?;
            clock.note("broker answering after 2.5 s (past the delivery deadline)");
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker(mock.broker_round_trip_time(1, Duration::ZERO))?;
            clock.note("broker answering at once again");
        }
        Fault::ProducerFatal => {
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
            );
            clock.note("broker answers out-of-order sequence: the producer's fatal error");
        }
        _ => {}
    }
    Ok(())
}

pub fn host_port(url: &str) -> anyhow::Result<String> {
    let u = url::Url::parse(url).with_context(|| url.to_string())?;
    let host = u.host_str().with_context(|| format!("{url}: no host"))?;
    let port = u
        .port_or_known_default()
        .or(match u.scheme() {
            "postgres" | "postgresql" => Some(5432),
            "mysql" | "mariadb" => Some(3306),
            _ => None,
        })
        .with_context(|| format!("{url}: no port"))?;
    Ok(format!("{host}:{port}"))
}
