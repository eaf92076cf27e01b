//! The workloads: keep-alive request-response, a connection storm, aborts, a stalled reader,
//! nginx under wrk.

use super::*;

/// 64-byte request/response round trips over one keep-alive connection per thread.
pub(crate) fn request_response() -> Sample {
    in_netns(|| {
        threads(|stop| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
            });
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            let mut buf = [1u8; 64];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                c.write_all(&buf).unwrap();
                c.read_exact(&mut buf).unwrap();
                n += 1;
            }
            drop(c);
            server.join().unwrap();
            n
        })
    })
}

/// connect, 1-byte request, 1-byte response, close (the server closes first).
pub(crate) fn connection_storm() -> Sample {
    in_netns(|| {
        threads(|stop| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let quit = done.clone();
            let server = thread::spawn(move || {
                listener.set_nonblocking(false).unwrap();
                while let Ok((mut served, _)) = listener.accept() {
                    if quit.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut byte = [0u8; 1];
                    if served.read_exact(&mut byte).is_ok() {
                        let _ = served.write_all(&byte);
                    }
                }
            });
            let mut count = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut client = TcpStream::connect(addr).unwrap();
                client.write_all(b"x").unwrap();
                let mut byte = [0u8; 2];
                let _ = client.read(&mut byte);
                let _ = client.read(&mut byte);
                count += 1;
            }
            done.store(true, Ordering::Relaxed);
            drop(TcpStream::connect(addr));
            server.join().unwrap();
            count
        })
    })
}

/// Connections closed by their server with 10 unread bytes: one RST-on-close each.
pub(crate) fn aborts() -> Sample {
    in_netns(|| {
        threads(|stop| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut count = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut client = TcpStream::connect(addr).unwrap();
                let (served, _) = listener.accept().unwrap();
                client.write_all(&[0u8; 10]).unwrap();
                let mut queued: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int.
                while unsafe { libc::ioctl(served.as_raw_fd(), libc::FIONREAD, &mut queued) } == 0
                    && queued < 10
                {}
                drop(served);
                count += 1;
            }
            count
        })
    })
}

/// Drives the loss counter: aborts at full speed for `RUN` with the agent stopped (SIGSTOP),
/// so nothing drains the ring buffer. Returns the aborts, the events reported once the agent
/// resumed, and the events it counted lost: every abort must be one or the other.
pub(crate) fn stalled_reader() -> (u64, u64, u64) {
    let agent = Agent::start_discarding(&[]);
    agent.pause();
    let aborts = aborts().ops as u64;
    agent.resume();
    let (reported, lost) = agent.aborts_settled();
    agent.stop();
    (aborts, reported, lost)
}

/// nginx on loopback serving a 1 KiB file (one worker, no access log); stopped on drop.
pub(crate) struct Nginx {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) _dir: tempfile::TempDir,
}

impl Nginx {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(dir.path().join("index.html"), vec![b'x'; 1024]).unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{port}; root {d}; }} }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-c"])
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian package)");
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// `wrk` requests/s, keep-alive or one connection per request.
    pub(crate) fn wrk(&self, keep_alive: bool) -> Sample {
        let mut cmd = Command::new("wrk");
        cmd.args(["-t2", "-c32", &format!("-d{}s", RUN.as_secs())]);
        if !keep_alive {
            cmd.args(["-H", "Connection: close"]);
        }
        let (t, busy) = (Instant::now(), busy_seconds());
        let out = cmd
            .arg(format!("http://127.0.0.1:{}/index.html", self.port))
            .output()
            .expect("wrk (Debian package)");
        let (secs, busy) = (t.elapsed().as_secs_f64(), busy_seconds() - busy);
        let text = String::from_utf8_lossy(&out.stdout);
        let rate: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:")?.trim().parse().ok())
            .unwrap_or(0.0);
        Sample::of(rate * RUN.as_secs_f64(), secs, busy)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its worker, which a killed master
        // leaves running (and holding its network namespace) after the run.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
