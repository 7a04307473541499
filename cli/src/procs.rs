//! CPU time of the processes behind each backend, read from /proc: the process that listens on
//! the backend's port and everything it forked (PostgreSQL serves each connection from a child).

use std::collections::{BTreeSet, HashMap};

/// Clock ticks per second in /proc/*/stat (USER_HZ, 100 on every Linux ABI).
const TICKS: f64 = 100.0;

/// One process's (ppid, user + system ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after its last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12).
    Some((
        f.get(1)?.parse().ok()?,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU seconds spent so far by `roots` and all their descendants (each counted once).
pub fn cpu_seconds(roots: &[u32]) -> f64 {
    let table: HashMap<u32, (u32, u64)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .collect();
    let mut tree: BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let before = tree.len();
        for (pid, (ppid, _)) in &table {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.iter()
        .filter_map(|p| table.get(p))
        .map(|(_, ticks)| *ticks as f64 / TICKS)
        .sum()
}

/// The process listening on TCP `port` on this machine, if any (and readable).
pub fn listening_on(port: u16) -> Option<u32> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A");
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if listening && local_port == Some(port) {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    all_pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref()))
            })
        })
    })
}

/// The ports a backend URL or broker list names: `scheme://[user@]host:port[,host:port]/…` or
/// `host:port,host:port`; `default` where a host has no port.
pub fn ports(url: &str, default: u16) -> Vec<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hosts = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, h)| h);
    hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(default)
        })
        .collect()
}

/// The local processes behind a backend (empty when it runs elsewhere).
pub fn behind(url: &str, default_port: u16) -> Vec<u32> {
    let mut pids: Vec<u32> = ports(url, default_port)
        .into_iter()
        .filter_map(listening_on)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_every_url_shape() {
        assert_eq!(ports("redis://127.0.0.1:6379", 6379), [6379]);
        assert_eq!(ports("rediss://u:p@h:7000/0", 6379), [7000]);
        assert_eq!(
            ports("redis+cluster://h1:7100,h2:7101,h3:7102", 6379),
            [7100, 7101, 7102]
        );
        assert_eq!(ports("127.0.0.1:9092", 9092), [9092]);
        assert_eq!(ports("postgres://postgres@localhost/test", 5432), [5432]);
        assert_eq!(
            ports("mysql://root@127.0.0.1:3306/test?ssl-mode=DISABLED", 3306),
            [3306]
        );
    }

    #[test]
    fn finds_a_listener_and_counts_its_cpu() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(listening_on(port), Some(std::process::id()));
        let start = cpu_seconds(&[std::process::id()]);
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(&[std::process::id()]) - start >= 0.1);
    }
}
