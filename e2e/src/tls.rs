//! Private TLS servers for the secured-backend tests: a throwaway CA (the `openssl` CLI), a Redis
//! on a TLS port with an ACL user, and a PostgreSQL cluster in a temporary directory with
//! `ssl=on`. Every server is stopped and its directory removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The ACL user and password the TLS Redis accepts (the default user is disabled).
pub const REDIS_USER: &str = "coupons";
pub const REDIS_PASSWORD: &str = "s3cret-redis";

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::unique(prefix));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all PEM.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = TempDir::new("pki");
        let d = dir.0.clone();
        let p = |f: &str| d.join(f).display().to_string();
        self_signed_ca("coupon test CA", &d.join("ca.key"), &d.join("ca.pem"));
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), ext).expect("ext file");
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &p(&format!("{name}.key")),
                "-out",
                &p(&format!("{name}.csr")),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &p(&format!("{name}.csr")),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &p(&format!("{name}.ext")),
                "-out",
                &p(&format!("{name}.pem")),
            ]);
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.0.join(file)
    }

    /// A second, unrelated CA: a client trusting it must refuse the servers.
    pub fn stranger_ca(&self) -> PathBuf {
        let p = self.path("stranger.pem");
        if !p.exists() {
            self_signed_ca("stranger CA", &self.path("stranger.key"), &p);
        }
        p
    }
}

/// A CA certificate and key, valid two days.
fn self_signed_ca(name: &str, key: &Path, pem: &Path) {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &key.display().to_string(),
        "-out",
        &pem.display().to_string(),
    ]);
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// redis-server with only a TLS port, client certificates required, and an ACL user.
pub struct TlsRedis {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl TlsRedis {
    pub fn start(pki: &Pki) -> Self {
        let dir = TempDir::new("tls-redis");
        let port = crate::free_port();
        let f = |name: &str| pki.path(name).display().to_string();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &f("server.pem"),
                "--tls-key-file",
                &f("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &f("ca.pem"),
                "--tls-auth-clients",
                "yes",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.0.display().to_string()])
            .args(["--user", "default", "off"])
            .args([
                "--user",
                REDIS_USER,
                "on",
                &format!(">{REDIS_PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        wait_listening(port, &mut child, "redis-server (TLS)");
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    /// `rediss://` with the ACL user and password.
    pub fn url(&self) -> String {
        format!(
            "rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{}",
            self.port
        )
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private PostgreSQL that accepts only TLS connections (`hostssl`; plain TCP is rejected).
pub struct TlsPostgres {
    pub port: u16,
    child: Child,
    dir: TempDir,
}

impl TlsPostgres {
    /// `None` when no PostgreSQL server binaries are installed (`PG_BIN_DIR` overrides the
    /// search under /usr/lib/postgresql).
    pub fn start(pki: &Pki) -> Option<Self> {
        let bin = pg_bin_dir()?;
        let dir = TempDir::new("tls-postgres");
        let data = dir.0.join("data");
        let as_root = is_root();
        if as_root {
            // initdb and postgres refuse to run as root: the cluster belongs to "postgres".
            run(Command::new("chown").args(["-R", "postgres", &dir.0.display().to_string()]));
        }
        let pg = |tool: &str| {
            let mut c = if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
                c
            } else {
                Command::new(bin.join(tool))
            };
            c.stdout(Stdio::null());
            c
        };
        run(pg("initdb")
            .args(["-D", &data.display().to_string()])
            .args(["-U", "postgres", "-A", "trust", "--no-sync"]));
        for f in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(pki.path(f), data.join(f)).expect("copy certificate");
        }
        let port = crate::free_port();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'ca.pem'\nfsync = off\n",
            dir.0.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
        )
        .expect("pg_hba.conf");
        if as_root {
            run(Command::new("chown").args(["-R", "postgres", &dir.0.display().to_string()]));
        }
        run(Command::new("chmod").args(["600", &data.join("server.key").display().to_string()]));
        let mut child = pg("postgres")
            .args(["-D", &data.display().to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        wait_listening(port, &mut child, "postgres (TLS)");
        Some(Self { port, child, dir })
    }

    /// A URL to the `postgres` database with the given query (`sslmode=…`).
    pub fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}
