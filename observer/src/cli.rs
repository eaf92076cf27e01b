//! The client commands: `observer events`, `observer sockets`, `observer status`. Each asks an
//! agent's API (`--agent`) and prints an aligned table, or the API's JSON with `--output json`.
//! Filters are passed through as query parameters: the agent validates them, so the CLI and
//! the API can never disagree on what is valid.
#![expect(clippy::print_stdout, reason = "printing is what these commands do")]

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::config::{ClientArgs, EventsArgs, Output, SocketsArgs};

/// How often `events --follow` asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Builds a query string from the given parameters, skipping absent ones.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(if q.is_empty() { '?' } else { '&' });
            let _ = write!(q, "{k}={}", encode(v));
        }
    }
    q
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs `path` from the agent: the parsed JSON and the body as sent (printed as is by
/// `--output json`, so field order is the agent's). Errors are one line.
fn get(client: &ClientArgs, path: &str) -> anyhow::Result<(Value, String)> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let url = format!("{}{path}", client.agent.trim_end_matches('/'));
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {}: {e}", client.agent))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    let json: Value = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer JSON ({status})"))?;
    if !status.is_success() {
        let msg = json["error"].as_str().unwrap_or("no error message");
        bail!("the agent refused the request ({status}): {msg}");
    }
    Ok((json, body))
}

/// `observer events`.
pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let mut filters = vec![
        ("kind", args.kind.clone()),
        ("since", args.since.clone()),
        ("until", args.until.clone()),
        ("pid", args.pid.map(|p| p.to_string())),
        ("comm", args.comm.clone()),
        ("pod", args.pod.clone()),
        ("namespace", args.namespace.clone()),
        ("peer", args.peer.clone()),
        ("limit", args.limit.map(|l| l.to_string())),
    ];
    let (first, raw) = get(&args.client, &format!("/api/v1/events{}", query(&filters)))?;
    let events = first["events"].as_array().cloned().unwrap_or_default();
    if !args.follow {
        match args.client.output {
            Output::Json => println!("{raw}"),
            Output::Table => print!("{}", events_table(&events, true)),
        }
        return Ok(());
    }
    // Following: oldest first, like `tail -f`, then whatever arrives.
    let mut last_id = events
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .max()
        .unwrap_or(0);
    print_follow(args.client.output, events.iter().rev(), true);
    filters.retain(|(k, _)| *k != "since" && *k != "limit");
    let mut header = events.is_empty();
    loop {
        // Forward from the last id seen, a page at a time, oldest first: a burst larger than
        // a page between two polls is read in several pages, none skipped.
        let mut f = filters.clone();
        f.push(("after_id", Some(last_id.to_string())));
        f.push(("limit", Some(crate::store::MAX_LIMIT.to_string())));
        let (page, _) = get(&args.client, &format!("/api/v1/events{}", query(&f)))?;
        let new = page["events"].as_array().cloned().unwrap_or_default();
        if let Some(max) = new.iter().filter_map(|e| e["id"].as_u64()).max() {
            last_id = last_id.max(max);
        }
        if !new.is_empty() {
            print_follow(args.client.output, new.iter(), header);
            header = false;
        }
        if new.len() < crate::store::MAX_LIMIT as usize {
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}

fn print_follow<'a>(output: Output, events: impl Iterator<Item = &'a Value>, header: bool) {
    let events: Vec<Value> = events.cloned().collect();
    match output {
        Output::Json => {
            for e in &events {
                println!("{e}");
            }
        }
        Output::Table => print!("{}", events_table(&events, header)),
    }
}

/// Text of a JSON field, `-` when null.
fn field(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows as aligned columns (the last column is left as long as it is).
fn table(head: &[&str], rows: &[Vec<String>], header: bool) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len().saturating_sub(1);
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out.push('\n');
    };
    if header {
        line(&head.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    }
    for r in rows {
        line(r);
    }
    out
}

/// `ip:port`; `ip` alone when the port is 0 (a pool-health event about a server's clients),
/// `*` when the address is unspecified too (the local end of a pool-health event).
fn endpoint(addr: &Value, port: &Value) -> String {
    let a = field(addr);
    if port.as_u64() == Some(0) {
        return if a == "0.0.0.0" || a == "::" {
            "*".to_owned()
        } else {
            a
        };
    }
    if a.contains(':') {
        format!("[{a}]:{}", field(port))
    } else {
        format!("{a}:{}", field(port))
    }
}

/// The events table.
pub fn events_table(events: &[Value], header: bool) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                field(&e["id"]),
                field(&e["ts"]),
                field(&e["kind"]),
                field(&e["pid"]),
                field(&e["comm"]),
                endpoint(&e["local_addr"], &e["local_port"]),
                endpoint(&e["peer_addr"], &e["peer_port"]),
                field(&e["unread_bytes"]),
                field(&e["hint"]),
            ]
        })
        .collect();
    table(
        &[
            "ID", "TIME", "KIND", "PID", "COMM", "LOCAL", "PEER", "UNREAD", "HINT",
        ],
        &rows,
        header,
    )
}

/// `observer sockets`.
pub fn sockets(args: &SocketsArgs) -> anyhow::Result<()> {
    let q = query(&[
        ("state", Some(args.state.clone())),
        ("min_age", args.min_age.clone()),
        ("pid", args.pid.map(|p| p.to_string())),
        ("comm", args.comm.clone()),
        ("peer", args.peer.clone()),
        ("limit", args.limit.map(|l| l.to_string())),
    ]);
    let (answer, raw) = get(&args.client, &format!("/api/v1/sockets{q}"))?;
    if args.client.output == Output::Json {
        println!("{raw}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer["sockets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let age = s["close_wait_ms"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), crate::events::human);
            let at_least = if s["close_wait_lower_bound"] == true {
                ">="
            } else {
                ""
            };
            vec![
                field(&s["state"]),
                format!("{at_least}{age}"),
                field(&s["pid"]),
                field(&s["comm"]),
                endpoint(&s["local_addr"], &s["local_port"]),
                endpoint(&s["peer_addr"], &s["peer_port"]),
                field(&s["unread_bytes"]),
                s["last_read_ms_ago"]
                    .as_u64()
                    .map_or_else(|| "never".to_owned(), crate::events::human),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "STATE",
                "AGE",
                "PID",
                "COMM",
                "LOCAL",
                "PEER",
                "UNREAD",
                "LAST READ"
            ],
            &rows,
            true
        )
    );
    Ok(())
}

/// `observer status`.
pub fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let (s, raw) = get(client, "/api/v1/status")?;
    if client.output == Output::Json {
        println!("{raw}");
        return Ok(());
    }
    println!(
        "observer {}  kernel {}  ready {}  up {}s  events {}",
        field(&s["version"]),
        field(&s["kernel"]),
        field(&s["ready"]),
        field(&s["uptime_seconds"]),
        field(&s["events_total"])
    );
    println!(
        "close_wait: {} tracked, threshold {}ms\n",
        field(&s["close_wait"]["tracked"]),
        field(&s["close_wait"]["threshold_ms"])
    );
    let probes: Vec<Vec<String>> = s["probes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                field(&p["purpose"]),
                field(&p["required"]),
                field(&p["attached"]),
                field(&p["type"]),
                field(&p["hook"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["PROBE", "REQUIRED", "ATTACHED", "TYPE", "HOOK"],
            &probes,
            true
        )
    );
    let drops: Vec<Vec<String>> = s["drops"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| vec![k.clone(), field(v)]).collect())
        .unwrap_or_default();
    println!();
    print!("{}", table(&["DROPS", "TOTAL"], &drops, true));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(
            query(&[
                ("kind", Some("rst_on_close".into())),
                ("pid", None),
                ("since", Some("2026-11-21T10:00:00+01:00".into()))
            ]),
            "?kind=rst_on_close&since=2026-11-21T10%3A00%3A00%2B01%3A00".replace("%3A", ":")
        );
        assert_eq!(query(&[("pid", None)]), "");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn endpoints_show_what_is_known() {
        let e = |a: &str, p: u64| endpoint(&Value::from(a), &Value::from(p));
        assert_eq!(e("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(e("::1", 80), "[::1]:80");
        assert_eq!(e("10.0.0.7", 0), "10.0.0.7", "a server's clients");
        assert_eq!(e("0.0.0.0", 0), "*", "no local end");
        assert_eq!(e("::", 0), "*");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]], true);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
