//! A simulated "internet" for egress tests (docs/BUILD-HOSTS.md): a network namespace of the
//! test's own, joined to the namespace the test runs in (where libvirtd and the
//! sandboxes' bridge are) by a veth pair, with an HTTP server on two ports and a DNS
//! server that maps test names to it. libvirt's NAT carries sandbox traffic out of
//! the bridge to it — when the agent's rules let it.
//!
//! Everything is torn down on drop: the servers, the veth and the namespace.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Port of the first HTTP server.
pub const HTTP_PORT: u16 = 8080;
/// Port of the second HTTP server (same address).
pub const HTTP_PORT_2: u16 = 8081;

#[derive(Debug)]
pub struct Internet {
    pub namespace: String,
    /// The server's address (inside the internet namespace).
    pub server: Ipv4Addr,
    /// This side of the veth (in the test's namespace).
    pub gateway: Ipv4Addr,
    /// `server:53`: the resolver to give the agent as its upstream.
    pub dns: String,
    /// The DNS server's query log (`--log-queries`), read by [`Internet::dns_queries`].
    dns_log: std::path::PathBuf,
    host_if: String,
    children: Vec<Child>,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Internet {
    /// Creates the namespace `fluid-inet-<tag>` with the server at 10.99.`n`.2, and
    /// `names` resolving to it.
    pub fn start(tag: &str, n: u8, names: &[&str]) -> Result<Self> {
        Self::start_mapped(tag, n, names, &[])
    }

    /// [`Internet::start`], and each of `mapped` (a name and its sub-domains) resolving
    /// to the address given with it (e.g. a private or loopback address).
    pub fn start_mapped(
        tag: &str,
        n: u8,
        names: &[&str],
        mapped: &[(&str, Ipv4Addr)],
    ) -> Result<Self> {
        let namespace = format!("fluid-inet-{tag}");
        let host_if = format!("fi{tag}");
        let peer_if = format!("fo{tag}");
        let gateway = Ipv4Addr::new(10, 99, n, 1);
        let server = Ipv4Addr::new(10, 99, n, 2);
        let mut net = Self {
            namespace: namespace.clone(),
            server,
            gateway,
            dns: format!("{server}:53"),
            dns_log: std::env::temp_dir().join(format!("fluid-inet-{tag}-dns.log")),
            host_if: host_if.clone(),
            children: Vec::new(),
        };
        run(&["ip", "netns", "add", &namespace])?;
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns",
            &namespace,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        let ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", namespace.as_str()];
            all.extend_from_slice(args);
            run(&all)
        };
        ns(&["ip", "link", "set", "lo", "up"])?;
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("{server}/24"),
            "dev",
            &peer_if,
        ])?;
        ns(&["ip", "link", "set", &peer_if, "up"])?;
        ns(&["ip", "route", "add", "default", "via", &gateway.to_string()])?;

        for port in [HTTP_PORT, HTTP_PORT_2] {
            let dir = std::env::temp_dir().join(format!("fluid-inet-{tag}-{port}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("index.html"), format!("internet-{port}\n"))?;
            net.spawn(&[
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                &server.to_string(),
                "--directory",
                &dir.to_string_lossy(),
            ])?;
        }
        let mut dns = vec![
            "dnsmasq".to_owned(),
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--user=root".into(),
            "--pid-file=".into(),
            "--port=53".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={server}"),
            "--local-ttl=30".into(),
            "--log-queries".into(),
            format!("--log-facility={}", net.dns_log.display()),
        ];
        let _ = std::fs::remove_file(&net.dns_log);
        for name in names {
            dns.push(format!("--address=/{name}/{server}"));
        }
        for (name, addr) in mapped {
            dns.push(format!("--address=/{name}/{addr}"));
        }
        let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
        net.spawn(&dns)?;
        net.wait_listening(HTTP_PORT)?;
        net.wait_listening(HTTP_PORT_2)?;
        Ok(net)
    }

    /// Serves `dir` over HTTP on `port` at the server's address (e.g. a package mirror
    /// built by `scripts/build-apt-mirror.sh`), and waits until it answers.
    pub fn serve(&mut self, port: u16, dir: &std::path::Path) -> Result<()> {
        let server = self.server.to_string();
        let dir = dir.to_string_lossy().into_owned();
        self.spawn(&[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            &server,
            "--directory",
            &dir,
        ])?;
        self.wait_listening(port)
    }

    /// The queries the DNS server received so far, as `(type, name)`, e.g.
    /// `("TXT", "abc.attacker.test")`: what got past a sandbox's DNS proxy.
    pub fn dns_queries(&self) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(&self.dns_log).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                // `… dnsmasq[pid]: query[TXT] abc.attacker.test from 10.99.71.1`
                let rest = &line[line.find("query[")? + "query[".len()..];
                let (qtype, rest) = rest.split_once("] ")?;
                let name = rest.split_whitespace().next()?;
                Some((qtype.to_owned(), name.to_owned()))
            })
            .collect()
    }

    fn spawn(&mut self, args: &[&str]) -> Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {args:?} in {}", self.namespace))?;
        self.children.push(child);
        Ok(())
    }

    /// Waits until the HTTP server on `port` answers from this namespace.
    fn wait_listening(&self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr = std::net::SocketAddr::from((self.server, port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
            if Instant::now() > deadline {
                bail!("the internet's HTTP server on {addr} did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
        let _ = std::fs::remove_file(&self.dns_log);
    }
}
