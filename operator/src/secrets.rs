//! The operator's own way to the backends a campaign names: the URLs from their Secret, the
//! Kafka properties file, and the TLS Secret's files. Workloads get those files mounted at
//! /etc/coupon/…; the operator writes them under its temporary directory instead and reads the
//! same URLs and properties with that prefix swapped, so one spec serves both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use coupon_core::connections::{KafkaConnection, RedisConnection, parse_properties};
use coupon_core::gate::StockGate;
use coupon_core::ledger::Ledger;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::crd::{CouponCampaign, SecretKey, TLS_MOUNT};
use crate::error::Error;

/// Everything needed to connect, read from the campaign's Secrets. Holds credentials: its
/// `Debug` redacts them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConnectionUrls {
    pub redis: String,
    pub redis_files: [Option<PathBuf>; 3],
    pub kafka: KafkaConnection,
    pub database: String,
}

impl std::fmt::Debug for ConnectionUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionUrls")
            .field("redis", &coupon_core::connections::redact(&self.redis))
            .field("kafka", &self.kafka)
            .field(
                "database",
                &coupon_core::connections::redact(&self.database),
            )
            .finish()
    }
}

impl ConnectionUrls {
    pub fn redis(&self) -> Result<RedisConnection, Error> {
        let [ca, cert, key] = &self.redis_files;
        Ok(RedisConnection::new(self.redis.as_str()).with_files(
            ca.as_deref(),
            cert.as_deref(),
            key.as_deref(),
        )?)
    }
}

/// Reads a campaign's connection Secrets (each Secret once).
pub async fn read(cc: &CouponCampaign, client: &Client) -> Result<ConnectionUrls, Error> {
    let ns = cc.namespace().unwrap_or_else(|| "default".into());
    let mut secrets = Secrets {
        api: Api::namespaced(client.clone(), &ns),
        cache: BTreeMap::new(),
    };
    let c = &cc.spec.connections;
    let tls_dir = match &c.tls {
        Some(tls) => {
            let dir = local_tls_dir(&ns, &tls.secret_name);
            let data = secrets.data(&tls.secret_name).await?;
            write_files(&dir, &data)
                .map_err(|e| Error::Secret(tls.secret_name.clone(), e.to_string()))?;
            Some(dir)
        }
        None => None,
    };
    let local = |text: String| match &tls_dir {
        Some(dir) => text.replace(TLS_MOUNT, &dir.display().to_string()),
        None => text,
    };
    let mut kafka = KafkaConnection::new(secrets.text(&c.kafka).await?);
    if let Some(props) = &c.kafka_properties {
        let text = secrets.text(props).await?;
        let parsed = parse_properties(&text)
            .map_err(|e| Error::Secret(props.name.clone(), format!("key {}: {e}", props.key)))?;
        kafka.properties = parsed.into_iter().map(|(k, v)| (k, local(v))).collect();
    }
    let file = |key: Option<&String>| Some(tls_dir.as_ref()?.join(key?));
    let redis_files = match &c.tls {
        Some(t) => [
            file(t.redis_ca.as_ref()),
            file(t.redis_client_cert.as_ref()),
            file(t.redis_client_key.as_ref()),
        ],
        None => [None, None, None],
    };
    Ok(ConnectionUrls {
        redis: secrets.text(&c.redis).await?,
        redis_files,
        kafka,
        database: local(secrets.text(&c.database).await?),
    })
}

struct Secrets {
    api: Api<Secret>,
    cache: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Secrets {
    async fn data(&mut self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        if let Some(d) = self.cache.get(name) {
            return Ok(d.clone());
        }
        let secret = self
            .api
            .get_opt(name)
            .await?
            .ok_or_else(|| Error::Secret(name.into(), "not found".into()))?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        self.cache.insert(name.into(), data.clone());
        Ok(data)
    }

    async fn text(&mut self, k: &SecretKey) -> Result<String, Error> {
        let data = self.data(&k.name).await?;
        let bytes = data
            .get(&k.key)
            .ok_or_else(|| Error::Secret(k.name.clone(), format!("has no key {}", k.key)))?;
        String::from_utf8(bytes.clone())
            .map_err(|_| Error::Secret(k.name.clone(), format!("key {} is not UTF-8", k.key)))
    }
}

/// Where the operator keeps a TLS Secret's files: private to this process's temporary dir.
fn local_tls_dir(namespace: &str, secret: &str) -> PathBuf {
    std::env::temp_dir()
        .join("coupon-operator-tls")
        .join(namespace)
        .join(secret)
}

/// Writes each key as a file readable by this user only, rewriting only what changed.
fn write_files(dir: &Path, data: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    for (key, bytes) in data {
        if key.contains('/') || key.starts_with('.') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("key {key:?} is not a plain file name"),
            ));
        }
        let path = dir.join(key);
        if std::fs::read(&path).is_ok_and(|old| &old == bytes) {
            continue;
        }
        // Created 0600 under a temporary name, then renamed over the old one: never readable
        // by others, never seen half-written.
        let fresh = dir.join(format!(".{key}.{}", std::process::id()));
        let _ = std::fs::remove_file(&fresh);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)
            .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
            .and_then(|()| std::fs::rename(&fresh, &path));
        written.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_written_once_and_keys_stay_in_their_directory() {
        let dir = std::env::temp_dir().join(format!("coupon-tls-test-{}", std::process::id()));
        let data = BTreeMap::from([("ca.pem".to_string(), b"CA".to_vec())]);
        write_files(&dir, &data).expect("written");
        assert_eq!(std::fs::read(dir.join("ca.pem")).expect("file"), b"CA");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca.pem"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "readable by this user only");
        let renewed = BTreeMap::from([("ca.pem".to_string(), b"CA2".to_vec())]);
        write_files(&dir, &renewed).expect("rewritten");
        assert_eq!(std::fs::read(dir.join("ca.pem")).expect("file"), b"CA2");
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            1,
            "no temporary left"
        );
        let evil = BTreeMap::from([("../escape".to_string(), b"x".to_vec())]);
        assert!(write_files(&dir, &evil).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

/// Connected backends, reused across reconciles of campaigns that share them.
#[derive(Clone)]
pub struct Connected {
    pub kafka: KafkaConnection,
    pub gate: Arc<dyn StockGate>,
    pub ledger: Ledger,
}
