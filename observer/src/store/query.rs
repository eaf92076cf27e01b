//! [`Filter`]: the event filters of `/api/v1/events` and `observer events`, parsed from a query
//! string with every bad value named, and turned into SQL with bound parameters.

use std::net::{IpAddr, SocketAddr};

use rusqlite::types::Value;

use super::Args;
use crate::events::Kind;

/// Most events one query returns (`limit` above it is refused, not clamped).
pub const MAX_LIMIT: u32 = 10_000;
/// Events returned when no `limit` is given.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest id and time (ns since the Unix epoch, 2262-04-11) the store can hold: SQLite
/// integers are signed 64-bit, so a larger value is refused before it reaches SQL.
pub const MAX_STORED: u64 = i64::MAX as u64;

/// Parameters of `/api/v1/events` (and the filters of `observer events`).
pub const PARAMS: [&str; 10] = [
    "kind",
    "since",
    "until",
    "pid",
    "comm",
    "pod",
    "namespace",
    "peer",
    "after_id",
    "limit",
];

/// What to select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Not before (ns since the Unix epoch).
    pub since_ns: Option<u64>,
    /// Not after (ns since the Unix epoch).
    pub until_ns: Option<u64>,
    /// Only this owner.
    pub pid: Option<u32>,
    /// Only this process name.
    pub comm: Option<String>,
    /// Only this pod.
    pub pod: Option<String>,
    /// Only this Kubernetes namespace.
    pub namespace: Option<String>,
    /// Only this peer address, and port when given.
    pub peer: Option<(IpAddr, Option<u16>)>,
    /// Only events with a larger id, oldest first (for following: a page at a time, forward).
    pub after_id: Option<u64>,
    /// At most this many.
    pub limit: u32,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            kind: None,
            since_ns: None,
            until_ns: None,
            pid: None,
            comm: None,
            pod: None,
            namespace: None,
            peer: None,
            after_id: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// A bad parameter: its name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter {param}: {why}")]
pub struct BadParam {
    /// The parameter.
    pub param: String,
    /// What is wrong with it.
    pub why: String,
}

fn bad(param: &str, why: impl Into<String>) -> BadParam {
    BadParam {
        param: param.to_owned(),
        why: why.into(),
    }
}

/// A time: RFC 3339, or a duration ago (`10m`), as ns since the Unix epoch, from 1970 to
/// 2262-04-11 (what the store holds).
pub fn parse_time(param: &str, v: &str, now_ns: u64) -> Result<u64, BadParam> {
    if let Ok(t) = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339) {
        let ns = u64::try_from(t.unix_timestamp_nanos()).map_err(|_| bad(param, "before 1970"))?;
        if ns > MAX_STORED {
            return Err(bad(param, "after 2262-04-11, the latest time stored"));
        }
        return Ok(ns);
    }
    let ago = humantime::parse_duration(v).map_err(|_| {
        bad(
            param,
            format!("{v:?} is neither RFC 3339 nor a duration like 10m"),
        )
    })?;
    let ago = u64::try_from(ago.as_nanos()).map_err(|_| bad(param, "duration too long"))?;
    Ok(now_ns.saturating_sub(ago))
}

/// A peer: `ip`, `ip:port` or `[ipv6]:port`.
pub fn parse_peer(v: &str) -> Result<(IpAddr, Option<u16>), BadParam> {
    if let Ok(sa) = v.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    v.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| bad("peer", format!("{v:?} is not an IP address or ip:port")))
}

fn number<T: std::str::FromStr>(param: &str, v: &str) -> Result<T, BadParam> {
    v.parse()
        .map_err(|_| bad(param, format!("{v:?} is not a valid number")))
}

fn text(param: &str, v: &str) -> Result<String, BadParam> {
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(bad(param, "must be 1 to 256 printable characters"));
    }
    Ok(v.to_owned())
}

impl Filter {
    /// Parses query-string pairs. Unknown or repeated parameters are errors too.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ns: u64,
    ) -> Result<Self, BadParam> {
        let mut f = Self::default();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in pairs {
            if !seen.insert(k) {
                return Err(bad(k, "given more than once"));
            }
            match k {
                "kind" => {
                    f.kind = Some(Kind::parse(v).ok_or_else(|| {
                        bad(k, format!("unknown kind {v:?} (one of {})", Kind::names()))
                    })?);
                }
                "since" => f.since_ns = Some(parse_time(k, v, now_ns)?),
                "until" => f.until_ns = Some(parse_time(k, v, now_ns)?),
                "pid" => f.pid = Some(number(k, v)?),
                "comm" => f.comm = Some(text(k, v)?),
                "pod" => f.pod = Some(text(k, v)?),
                "namespace" => f.namespace = Some(text(k, v)?),
                "peer" => f.peer = Some(parse_peer(v)?),
                "after_id" => {
                    let id: u64 = number(k, v)?;
                    if id > MAX_STORED {
                        return Err(bad(k, format!("must be at most {MAX_STORED}")));
                    }
                    f.after_id = Some(id);
                }
                "limit" => {
                    let n: u32 = number(k, v)?;
                    if n == 0 || n > MAX_LIMIT {
                        return Err(bad(k, format!("must be between 1 and {MAX_LIMIT}")));
                    }
                    f.limit = n;
                }
                other => return Err(bad(other, "unknown parameter")),
            }
        }
        if let (Some(s), Some(u)) = (f.since_ns, f.until_ns)
            && s > u
        {
            return Err(bad("since", "is after until"));
        }
        Ok(f)
    }

    /// The SQL and its bound values: newest first, or with `after_id` the oldest after it.
    /// Every bound value fits SQLite's signed integers (checked when parsed).
    pub(crate) fn sql(&self) -> (String, Args) {
        let mut sql = String::from("SELECT json FROM events WHERE 1=1");
        let mut args: Args = Vec::new();
        let mut cond = |clause: &str, v: Value| {
            sql.push_str(" AND ");
            sql.push_str(clause);
            args.push(v);
        };
        if let Some(k) = self.kind {
            cond("kind = ?", Value::Text(k.as_str().to_owned()));
        }
        let int = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        if let Some(s) = self.since_ns {
            cond("ts_ns >= ?", int(s));
        }
        if let Some(u) = self.until_ns {
            cond("ts_ns <= ?", int(u));
        }
        if let Some(p) = self.pid {
            cond("pid = ?", Value::Integer(i64::from(p)));
        }
        if let Some(c) = &self.comm {
            cond("comm = ?", Value::Text(c.clone()));
        }
        if let Some(p) = &self.pod {
            cond("pod = ?", Value::Text(p.clone()));
        }
        if let Some(n) = &self.namespace {
            cond("namespace = ?", Value::Text(n.clone()));
        }
        if let Some((ip, port)) = self.peer {
            cond("peer_addr = ?", Value::Text(ip.to_string()));
            if let Some(port) = port {
                cond("peer_port = ?", Value::Integer(i64::from(port)));
            }
        }
        if let Some(a) = self.after_id {
            cond("id > ?", int(a));
            sql.push_str(" ORDER BY id ASC LIMIT ?");
        } else {
            sql.push_str(" ORDER BY id DESC LIMIT ?");
        }
        args.push(Value::Integer(i64::from(self.limit)));
        (sql, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_parameter_is_understood() {
        for p in PARAMS {
            let e = Filter::from_pairs([(p, "\u{1}")], 0).err();
            assert!(
                e.as_ref().is_none_or(|e| e.why != "unknown parameter"),
                "{p} is listed but not parsed"
            );
        }
    }
}
