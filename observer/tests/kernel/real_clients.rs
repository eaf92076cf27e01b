//! Real clients from Debian's packages against a real HTTP server, stopping early: curl piped
//! into a reader that gives up, and Python `requests` closing a streamed response unread.

use std::{
    io::Read as _,
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::support::{Agent, events, in_netns, patience_secs, require_bpf, tcp_ext};

pub(crate) const PYTHON: &str = "/usr/bin/python3";
const BODY: usize = 8 << 20;

/// `python3 -m http.server` serving an 8 MiB file, in the calling thread's namespace.
pub(crate) struct HttpServer {
    pub(crate) child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl HttpServer {
    pub(crate) fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "observer-http-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("big"), vec![b'x'; BODY]).unwrap();
        let port = 18_080;
        let child = Command::new(PYTHON)
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let deadline = Instant::now() + patience_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn curl_stopped_early_is_caught_with_its_pid() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, curl_pid, port) = in_netns(|ns| {
        let server = HttpServer::start();
        let mut curl = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{}/big", server.port)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        // `curl ... | head -c 100`: read 100 bytes, then stop reading: curl blocks on the full
        // pipe while its socket's receive queue fills; closing the pipe then kills it mid-body.
        let before = tcp_ext("TCPAbortOnClose");
        let mut out = curl.stdout.take().unwrap();
        let mut head = [0u8; 100];
        out.read_exact(&mut head).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(out);
        let _ = curl.wait();
        assert!(
            tcp_ext("TCPAbortOnClose") > before,
            "the kernel saw curl abort"
        );
        (ns, curl.id(), server.port)
    });
    assert_client_blamed(&events(&agent, ns, 1), curl_pid, "curl", port);
}

#[test]
fn python_requests_closing_a_streamed_response_is_caught() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, py_pid, port) = in_netns(|ns| {
        let server = HttpServer::start();
        (ns, requests_closing_early(server.port, 1), server.port)
    });
    assert_client_blamed(&events(&agent, ns, 1), py_pid, "python3", port);
}

/// Python `requests` getting `/big` from `port` `times` times, each time reading 100 bytes of
/// the streamed response and closing it; returns the client's pid once it exited.
pub(crate) fn requests_closing_early(port: u16, times: usize) -> u32 {
    let script = format!(
        "import requests, time\nfor _ in range({times}):\n    r = requests.get('http://127.0.0.1:{port}/big', stream=True)\n    r.raw.read(100)\n    time.sleep(0.3)\n    r.close()\n"
    );
    let mut py = Command::new(PYTHON)
        .args(["-c", &script])
        .spawn()
        .expect("python3 requests");
    assert!(py.wait().unwrap().success(), "the requests script failed");
    py.id()
}

/// Exactly one `rst_on_close` of the client process `pid` (`comm`) towards the server `port`.
fn assert_client_blamed(evs: &[serde_json::Value], pid: u32, comm: &str, port: u16) {
    let mine: Vec<_> = evs.iter().filter(|e| e["pid"] == pid).collect();
    assert_eq!(mine.len(), 1, "one event for {comm} ({pid}): {evs:#?}");
    let e = mine[0];
    assert_eq!(e["kind"], "rst_on_close");
    assert_eq!(e["comm"], comm);
    assert_eq!(e["role"], "client");
    assert_eq!(e["peer_port"], port);
    assert!(e["unread_bytes"].as_u64().unwrap() > 0);
}
