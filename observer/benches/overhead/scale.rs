//! Scale: the agent's memory and scan times with many established or CLOSE_WAIT sockets.

use super::*;

/// `n` established loopback connections (both ends open, `2n` tracked sockets): the agent's
/// RSS and map memory, its CPU while idle, and the connections it counts as established.
/// Both ends are held by Python processes, `per` connections each (the file limit here is
/// 20,000 per process), one listening port per pair (ports are unique per destination).
pub(crate) fn established_scale(n: usize) -> (u64, u64, u64, f64, u64, usize) {
    const PER: usize = 16_667;
    let agent = Agent::start_discarding(&[]);
    let groups = n.div_ceil(PER);
    let procs = in_netns(move || {
        let mut procs = Vec::new();
        for g in 0..groups {
            // Below the namespace's ephemeral range (1024-65535), so no client's local port
            // can take a listening port first.
            let port = 900 + g;
            let server = format!(
                "import resource, socket, sys\nresource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))\nl = socket.socket(); l.bind(('127.0.0.1', {port})); l.listen(4096)\nprint('listening', flush=True)\nheld = [l.accept()[0] for _ in range({PER})]\nprint('ok', flush=True)\nsys.stdin.read()\n"
            );
            let client = format!(
                "import resource, socket, sys\nresource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))\nheld = [socket.create_connection(('127.0.0.1', {port})) for _ in range({PER})]\nprint('ok', flush=True)\nsys.stdin.read()\n"
            );
            let mut s = python(&server);
            let mut line = [0u8; 10];
            s.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
            procs.push(s);
            procs.push(python(&client));
        }
        procs
    });
    let mut procs = procs;
    wait_ok(&mut procs);
    // Two pool scans to count them.
    let (rss, peak, maps, idle_cpu) = agent.settled(Duration::from_secs(11));
    let established = agent.metric_sum("observer_connections_established");
    for mut p in procs {
        drop(p.stdin.take());
        let _ = p.wait();
    }
    agent.stop();
    (rss, peak, maps, idle_cpu, established, 2 * groups * PER)
}

/// Waits for each process to print `ok`.
pub(crate) fn wait_ok(procs: &mut [Child]) {
    for p in procs {
        let mut ok = [0u8; 3];
        p.stdout.as_mut().unwrap().read_exact(&mut ok).unwrap();
    }
}

/// `python3 -c script` with piped stdin and stdout.
pub(crate) fn python(script: &str) -> Child {
    Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `n` sockets in CLOSE_WAIT: the agent's RSS and map memory, and its CPU while idle. The
/// client ends are held by three Python processes (one process may hold only so many files),
/// the server ends are accepted and closed here.
pub(crate) fn close_wait_scale(n: usize) -> (u64, u64, u64, f64) {
    const HOLDERS: usize = 3;
    let agent = Agent::start_discarding(&[]);
    let holders = in_netns(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let per = n / HOLDERS;
        let script = format!(
            "import socket, sys\nheld = [socket.create_connection(('127.0.0.1', {port})) for _ in range({per})]\nsys.stdout.write('ok\\n'); sys.stdout.flush()\nsys.stdin.read()\n"
        );
        let holders: Vec<Child> = (0..HOLDERS)
            .map(|_| {
                Command::new("/usr/bin/python3")
                    .args(["-c", &script])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for _ in 0..per * HOLDERS {
            drop(l.accept().unwrap());
        }
        holders
    });
    let mut holders = holders;
    wait_ok(&mut holders);
    // Two scans to settle.
    let (rss, peak, maps, idle_cpu) = agent.settled(Duration::from_secs(3));
    let tracked = agent.metric_sum("observer_close_wait_sockets");
    println!(
        "close_wait: {tracked} of {} sockets tracked",
        n / HOLDERS * HOLDERS
    );
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    agent.stop();
    (rss, peak, maps, idle_cpu)
}
