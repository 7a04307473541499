//! Secured backends on real servers with certificates made by the test: Redis with only a TLS
//! port, client certificates and an ACL user; a private PostgreSQL that accepts only TLS; the
//! machine's MariaDB with sqlx's ssl-mode; Apache Kafka's SSL listener through librdkafka
//! properties from a file and KAFKA_CLIENT_* variables. Then every binary runs a load over those
//! connections and `couponctl verify` is green.

use std::path::Path;

use coupon_core::connections::RedisConnection;
use coupon_core::gate::{GateCoupon, Provisioning, RedisGate, Reserving};
use coupon_core::ledger::Ledger;
use coupon_e2e::binaries::{Environments, bin, run_drop};
use coupon_e2e::tls::{Pki, REDIS_PASSWORD, REDIS_USER, TempDir, TlsPostgres, TlsRedis};
use coupon_e2e::{free_port, unique};

fn tls_redis(pki: &Pki, redis: &TlsRedis) -> RedisConnection {
    RedisConnection::new(redis.url())
        .with_files(
            Some(&pki.path("ca.pem")),
            Some(&pki.path("client.pem")),
            Some(&pki.path("client.key")),
        )
        .expect("certificate files")
}

async fn refused(conn: RedisConnection) -> String {
    match RedisGate::connect(conn).await {
        Ok(_) => panic!("connected where it must be refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn redis_over_tls_with_an_acl_user_and_a_client_certificate() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let gate = RedisGate::connect(tls_redis(&pki, &redis))
        .await
        .expect("TLS + ACL + client certificate");
    let name = unique("tls");
    let coupon = GateCoupon {
        quantity: 2,
        starts_ms: 0,
        ends_ms: 0,
        shards: 1,
    };
    gate.ensure(&name, 1, coupon, &[]).await.expect("ensure");
    let reserved = gate
        .reserve(&name, 1, 7, uuid::Uuid::now_v7())
        .await
        .expect("reserve");
    assert_eq!(reserved, coupon_core::gate::Decision::Reserved);

    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let with = |url: String, ca: Option<&Path>, client: bool| {
        RedisConnection::new(url)
            .with_files(
                ca,
                client.then_some(cert.as_path()),
                client.then_some(key.as_path()),
            )
            .expect("files")
    };
    // The private CA is not in the system's trust store.
    let e = refused(with(redis.url(), None, true)).await;
    assert!(!e.is_empty());
    // A server signed by another CA is refused.
    let stranger = pki.stranger_ca();
    refused(with(redis.url(), Some(&stranger), true)).await;
    // The server requires a client certificate.
    refused(with(redis.url(), Some(&ca), false)).await;
    // A wrong password is refused, and the error does not print it.
    let wrong = format!(
        "rediss://{REDIS_USER}:not-the-password@127.0.0.1:{}",
        redis.port
    );
    let e = refused(with(wrong, Some(&ca), true)).await;
    assert!(!e.contains("not-the-password"), "{e}");
    // The default user is off: no user, no entry.
    let anonymous = format!("rediss://127.0.0.1:{}", redis.port);
    refused(with(anonymous, Some(&ca), true)).await;
    // Plain TCP to the TLS port gets nowhere.
    refused(RedisConnection::new(format!(
        "redis://127.0.0.1:{}",
        redis.port
    )))
    .await;
    assert_ne!(REDIS_PASSWORD, "not-the-password");
}

#[tokio::test]
async fn postgres_requires_tls_and_verifies_the_server() {
    let pki = Pki::new();
    let Some(pg) = TlsPostgres::start(&pki) else {
        panic!("PostgreSQL server binaries not found (set PG_BIN_DIR)");
    };
    let ca = pki.path("ca.pem").display().to_string();
    let ledger = Ledger::connect(&pg.url(&format!("sslmode=verify-full&sslrootcert={ca}")), 2)
        .await
        .expect("verify-full with the private CA");
    ledger.close().await;

    for (query, why) in [
        (
            "sslmode=disable".to_string(),
            "plain TCP is rejected by pg_hba",
        ),
        (
            format!(
                "sslmode=verify-full&sslrootcert={}",
                pki.stranger_ca().display()
            ),
            "a server signed by another CA",
        ),
    ] {
        let e = Ledger::connect(&pg.url(&query), 1).await.err();
        assert!(e.is_some(), "{why}: connected with {query}");
    }
    assert!(pg.dir().exists());
}

#[tokio::test]
async fn mariadb_ssl_mode_is_honoured() {
    let url = coupon_e2e::mysql_url();
    let plain = sqlx::MySqlPool::connect(&url).await.expect("plain MariaDB");
    let have_ssl: (String, String) = sqlx::query_as("SHOW VARIABLES LIKE 'have_ssl'")
        .fetch_one(&plain)
        .await
        .expect("have_ssl");
    plain.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let required = Ledger::connect(&format!("{url}{sep}ssl-mode=REQUIRED"), 1).await;
    if have_ssl.1 == "YES" {
        required.expect("TLS to a server that has it");
    } else {
        // This machine's MariaDB has no TLS: REQUIRED must fail, not fall back to plain text.
        let Err(e) = required else {
            panic!("ssl-mode=REQUIRED connected to a server without TLS");
        };
        let e = e.to_string();
        assert!(
            e.to_lowercase().contains("tls") || e.to_lowercase().contains("ssl"),
            "{e}"
        );
    }
    Ledger::connect(&format!("{url}{sep}ssl-mode=PREFERRED"), 1)
        .await
        .expect("PREFERRED works either way");
}

/// Every binary over secured backends: TLS Redis with a client certificate, TLS-only
/// PostgreSQL with verify-full, and Kafka's SSL listener through a properties file plus a
/// `KAFKA_CLIENT_*` variable; provision, grow the topic, a load, a green verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_binary_runs_over_secured_backends() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let pg = TlsPostgres::start(&pki).expect("PostgreSQL server binaries");
    let kafka = coupon_e2e::kafka_node::listeners();
    let dir = TempDir::new("secured");
    let props = dir.0.join("client.properties");
    std::fs::write(
        &props,
        format!(
            "# what a managed Kafka's console hands out\nsecurity.protocol=SSL\nssl.ca.location={}\nclient.id=coupon-secured-test\n",
            kafka.ca.display()
        ),
    )
    .expect("properties file");
    let p = |f: &str| pki.path(f).display().to_string();
    let envs = Environments {
        common: vec![
            ("REDIS_URL".into(), redis.url()),
            ("REDIS_CA_FILE".into(), p("ca.pem")),
            ("REDIS_CLIENT_CERT".into(), p("client.pem")),
            ("REDIS_CLIENT_KEY".into(), p("client.key")),
            (
                "DATABASE_URL".into(),
                pg.url(&format!("sslmode=verify-full&sslrootcert={}", p("ca.pem"))),
            ),
            ("KAFKA_BROKERS".into(), kafka.ssl.clone()),
            ("KAFKA_PROPERTIES_FILE".into(), props.display().to_string()),
            ("KAFKA_CLIENT_SOCKET_TIMEOUT_MS".into(), "20000".into()),
        ],
        own: Default::default(),
    };
    let drop = run_drop(&envs, &unique("secured"), 2).await;
    assert!(drop.accepted > 0, "nothing accepted over secured backends");
    assert_eq!(
        coupon_e2e::kafka_node::partitions(&drop.campaign),
        3,
        "the topic grew over SSL"
    );
}

#[test]
fn kafka_properties_reach_librdkafka() {
    let dir = TempDir::new("kafka-props");
    let run = |env: &[(&str, &str)]| {
        let mut c = bin("coupon-api");
        c.env("CAMPAIGN", "props-test")
            .env("KAFKA_BROKERS", coupon_e2e::kafka_brokers())
            .env("REDIS_URL", coupon_e2e::redis_url())
            .env("LISTEN", format!("127.0.0.1:{}", free_port()));
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("coupon-api runs");
        assert!(!out.status.success(), "started with {env:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let missing_ca = dir.0.join("no-such-ca.pem").display().to_string();
    let e = run(&[
        ("KAFKA_CLIENT_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_CLIENT_SSL_CA_LOCATION", &missing_ca),
    ]);
    assert!(e.contains("ssl.ca.location"), "{e}");
    let e = run(&[("KAFKA_CLIENT_NO_SUCH_PROPERTY", "1")]);
    assert!(e.contains("no.such.property"), "{e}");
    let file = dir.0.join("client.properties");
    std::fs::write(&file, "sasl.mechanism=PLAIN\nthis line has no separator\n").expect("write");
    let e = run(&[("KAFKA_PROPERTIES_FILE", &file.display().to_string())]);
    assert!(
        e.contains("line 2") && e.contains("client.properties"),
        "{e}"
    );
    let e = run(&[("KAFKA_PROPERTIES_FILE", "/no/such/client.properties")]);
    assert!(e.contains("/no/such/client.properties"), "{e}");
}

#[test]
fn secrets_stay_out_of_help_and_logs() {
    for name in [
        "coupon-api",
        "coupon-consumer",
        "couponctl",
        "coupon-operator",
    ] {
        let out = bin(name)
            .arg("--help")
            .env("REDIS_URL", "rediss://coupons:redis-hunter2@127.0.0.1:6380")
            .env("DATABASE_URL", "postgres://app:db-hunter2@127.0.0.1/x")
            .env("KAFKA_CLIENT_SASL_PASSWORD", "kafka-hunter2")
            .output()
            .expect("--help");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name} --help: {text}");
        assert!(
            !text.contains("hunter2"),
            "{name} --help shows a secret:\n{text}"
        );
    }
    // A failing start logs its configuration's shape, never the password.
    let out = bin("coupon-api")
        .env("CAMPAIGN", "secrets-test")
        .env("REDIS_URL", "redis://coupons:redis-hunter2@127.0.0.1:1")
        .env("KAFKA_CLIENT_SASL_PASSWORD", "kafka-hunter2")
        .env("RUST_LOG", "debug")
        .output()
        .expect("coupon-api runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!text.contains("hunter2"), "{text}");
}
