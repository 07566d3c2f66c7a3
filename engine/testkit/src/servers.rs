//! Real third-party servers for the store tests, each started on a free port of 127.0.0.1
//! and killed when dropped: moto (S3), gcp-storage-emulator (GCS), tinyproxy (a forward
//! proxy), mitmproxy (a proxy that intercepts HTTPS, as Dragonfly's dfdaemon does).
//! `scripts/setup-test.sh` installs them; without them a test says so and skips,
//! unless `MODELPULL_REQUIRE_SERVERS=1` (set by `scripts/test.sh`) makes that a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The virtualenv with moto, gcp-storage-emulator and huggingface_hub.
#[derive(Debug, Clone)]
pub struct Venv(pub PathBuf);

impl Venv {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.0.join("bin").join(name)
    }

    pub fn python(&self) -> PathBuf {
        self.bin("python")
    }
}

/// Skips (returns `None`) with a message, or fails when servers are required.
pub fn missing(what: &str) -> Option<std::convert::Infallible> {
    unavailable(&format!(
        "{what} is not installed; run scripts/setup-test.sh"
    ))
}

/// Skips (returns `None`) saying why, or fails when servers are required: for what a test
/// needs of the machine rather than an installed server (root, a cgroup, a mount). Required
/// runs (CI) are root with Docker's cgroups, so a skip there hides a test that did not run.
pub fn unavailable(why: &str) -> Option<std::convert::Infallible> {
    if std::env::var("MODELPULL_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!("{why} (MODELPULL_REQUIRE_SERVERS=1)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

pub fn venv() -> Option<Venv> {
    let dir = std::env::var_os("MODELPULL_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-test"));
    if dir.join("bin/python").exists() {
        Some(Venv(dir))
    } else {
        missing(&format!("the test virtualenv {}", dir.display()))?;
        None
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process; killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// Asks the server to stop (SIGTERM), as its own service manager would, so it stops what it
/// started too (nginx's workers outlive a killed master, still holding the port); kills it if
/// it is still there after 5 s.
impl Drop for Server {
    fn drop(&mut self) {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits until `GET ready_path` gets any answer (`None`: until the port
/// accepts connections, for TLS servers).
fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir, ready_path: Option<&str>) -> Server {
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = cmd
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut server = Server { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = match ready_path {
            Some(path) => http_status(port, path).is_some(),
            None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        if ready {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{cmd:?} exited with {status}: {}", server.log());
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not answer within 30 s: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status of `GET path`, if anything answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// moto's S3 (and IAM, STS) server. With `auth`, signatures are checked after the first
/// five requests, which `support/s3_seed.py` spends creating a role, a user and its key.
pub fn moto(venv: &Venv, auth: bool) -> Server {
    moto_with(venv, auth, None)
}

/// moto over https with the given certificate and key (PEM).
pub fn moto_tls(venv: &Venv, cert_pem: &str, key_pem: &str) -> Server {
    moto_with(venv, false, Some((cert_pem, key_pem)))
}

fn moto_with(venv: &Venv, auth: bool, tls: Option<(&str, &str)>) -> Server {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(venv.bin("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    if auth {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "5");
    }
    if let Some((cert, key)) = tls {
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        cmd.arg("-s")
            .arg("-c")
            .arg(&cert_path)
            .arg("-k")
            .arg(&key_path);
        return spawn(cmd, port, dir, None);
    }
    spawn(cmd, port, dir, Some("/moto-api/"))
}

/// gcp-storage-emulator, keeping objects on disk under the server's directory so a test
/// can damage one behind the server's back.
pub fn gcs(venv: &Venv) -> Server {
    let port = free_port();
    let mut cmd = Command::new(venv.bin("gcp-storage-emulator"));
    cmd.args(["start", "--host", "127.0.0.1", "--port", &port.to_string()]);
    spawn(cmd, port, tempfile::tempdir().unwrap(), Some("/"))
}

/// tinyproxy, allowing CONNECT to any port; with `credentials`, it asks for basic auth.
pub fn tinyproxy(credentials: Option<(&str, &str)>) -> Option<Server> {
    let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(bin) = bin else {
        missing("tinyproxy")?;
        return None;
    };
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut conf = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\nLogLevel Connect\nAllow 127.0.0.1\nDisableViaHeader Yes\n"
    );
    if let Some((user, pass)) = credentials {
        conf.push_str(&format!("BasicAuth {user} {pass}\n"));
    }
    let conf_path = dir.path().join("tinyproxy.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-d").arg("-c").arg(&conf_path);
    // Any answer (tinyproxy says 400 to a request for itself) means it is up.
    Some(spawn(cmd, port, dir, Some("/")))
}

/// mitmdump, intercepting every HTTPS tunnel with a CA it makes at start in its own confdir.
/// It verifies origins against `upstream_ca` (PEM) and logs one line per request it relays
/// (`Server::log`). It lives in a virtualenv of its own, `.venv-mitmproxy`: its pinned
/// dependencies conflict with those of the test virtualenv's servers.
pub fn mitmproxy(upstream_ca: &str) -> Option<Mitm> {
    let venv = Venv(
        std::env::var_os("MODELPULL_TEST_MITMPROXY_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mitmproxy")),
    );
    let bin = venv.bin("mitmdump");
    if !bin.exists() {
        missing(&format!("mitmproxy ({})", bin.display()))?;
        return None;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let confdir = dir.path().join("conf");
    let upstream = dir.path().join("upstream-ca.pem");
    std::fs::write(&upstream, upstream_ca).unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        &port.to_string(),
    ])
    .arg("--set")
    .arg(format!("confdir={}", confdir.display()))
    .arg("--set")
    .arg(format!(
        "ssl_verify_upstream_trusted_ca={}",
        upstream.display()
    ))
    .args(["--set", "flow_detail=1"]);
    let server = spawn(cmd, port, dir, None);
    let ca_cert = confdir.join("mitmproxy-ca-cert.pem");
    assert!(
        ca_cert.exists(),
        "mitmproxy made no CA in {}: {}",
        confdir.display(),
        server.log()
    );
    Some(Mitm {
        ca_key_and_cert: confdir.join("mitmproxy-ca.pem"),
        ca_cert,
        server,
        venv,
    })
}

/// A running mitmproxy and the CA it signs intercepted connections with.
#[derive(Debug)]
pub struct Mitm {
    pub server: Server,
    /// The CA certificate (PEM) clients must trust to talk through it.
    pub ca_cert: PathBuf,
    /// The CA's private key and certificate (PEM).
    ca_key_and_cert: PathBuf,
    venv: Venv,
}

/// Prints the PKCS #1 key mitmproxy keeps as PKCS #8, the form ring reads.
const TO_PKCS8: &str = "import sys
from cryptography.hazmat.primitives import serialization as s
key = s.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)
sys.stdout.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode())
";

impl Mitm {
    /// A certificate for `names` signed by this proxy's CA, such as only the proxy would
    /// vouch for.
    pub fn leaf(&self, names: &[&str]) -> modelpull_origin::TlsIdentity {
        let out = Command::new(self.venv.python())
            .args(["-c", TO_PKCS8])
            .arg(&self.ca_key_and_cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot read mitmproxy's CA key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout).unwrap();
        let cert = std::fs::read_to_string(&self.ca_cert).unwrap();
        crate::pki::leaf_signed_by(&key, &cert, names)
    }
}

/// nginx serving `root` on 127.0.0.1 with `directives` added to its `server` block (e.g.
/// `limit_rate 2m;` to cap each connection as object stores do, or `limit_conn` to refuse
/// connections past a count with 503). Its access log is `server.log`'s sibling `access.log`.
pub fn nginx(root: &Path, directives: &str) -> Option<Server> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(bin) = bin else {
        missing("nginx")?;
        return None;
    };
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log {p}/access.log;\n  client_body_temp_path {p};\n\
         proxy_temp_path {p};\n  fastcgi_temp_path {p};\n  uwsgi_temp_path {p};\n\
         scgi_temp_path {p};\n  limit_conn_zone $binary_remote_addr zone=per_client:1m;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    {directives}\n  }}\n}}\n",
        root = root.display()
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path);
    Some(spawn(cmd, port, dir, Some("/")))
}

/// Runs a helper script of `support/` with the venv's Python, `input` on stdin; returns
/// stdout.
pub fn python(venv: &Venv, script: &str, args: &[&str], input: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support")
        .join(script);
    let mut child = Command::new(venv.python())
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A small HTTP responder on 127.0.0.1 for endpoints no packaged server speaks here (an OAuth
/// token endpoint, a metadata server, a paginated listing): `answer(head, body)` gets the
/// request head (request line and headers) and body of each connection and gives the status
/// line and body of the reply. Returns the port; the thread lives as long as the test.
pub fn responder(answer: impl Fn(&str, &str) -> (&'static str, String) + Send + 'static) -> u16 {
    use std::io::BufRead;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let (mut head, mut len) = (String::new(), 0);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let (status, reply) = answer(&head, &String::from_utf8_lossy(&body));
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    port
}
