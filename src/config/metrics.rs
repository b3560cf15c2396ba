//! The `[metrics]` table (README "Metrics"): as written, then validated.
//!
//! ```toml
//! [metrics]
//! listen = "127.0.0.1:9464"   # or a bare port (9464 or "9464"): 127.0.0.1
//! ```
//!
//! Absent: no listener (the default).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

use super::error::Collector;
use super::raw::KeySpec;

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Listen>,
}

/// A port alone (TOML integer) or an address in quotes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    Port(i64),
    Text(String),
}

pub(crate) const METRICS_KEYS: &[KeySpec] = &[KeySpec {
    name: "listen",
    expect: "an address and port in quotes, or a port",
    example: r#""127.0.0.1:9464""#,
}];

/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Where `GET /metrics` and `GET /healthz` are served; loopback unless an address was
    /// written.
    pub listen: SocketAddr,
}

const FIX: &str = "write listen = \"127.0.0.1:9464\" (an IP address and a port, [::1]:9464 for IPv6), or only a port (9464) to listen on 127.0.0.1; remove [metrics] to serve nothing";

pub(crate) fn validate(
    raw: &Option<RawMetrics>,
    file: &Path,
    errors: &mut Collector,
) -> Option<Option<MetricsSettings>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    let Some(listen) = &raw.listen else {
        errors.push(
            file,
            "metrics.listen",
            "[metrics] has no listen address",
            FIX,
        );
        return None;
    };
    match parse_listen(listen) {
        Ok(addr) => Some(Some(MetricsSettings { listen: addr })),
        Err(problem) => {
            errors.push(file, "metrics.listen", problem, FIX);
            None
        }
    }
}

/// `9464`, `"9464"`, `"localhost:9464"` → 127.0.0.1:9464; `"ADDRESS:PORT"`, `"[V6]:PORT"`.
pub fn parse_listen(listen: &Listen) -> Result<SocketAddr, String> {
    let port_alone = |p: i64| -> Result<SocketAddr, String> {
        u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            .ok_or_else(|| format!("{p} is not a port (1 to 65535)"))
    };
    match listen {
        Listen::Port(p) => port_alone(*p),
        Listen::Text(t) => {
            let t = t.trim();
            if let Ok(p) = t.parse::<i64>() {
                return port_alone(p);
            }
            if let Some(port) = t.strip_prefix("localhost:") {
                return port
                    .parse::<i64>()
                    .map_err(|_| format!("{t:?}: {port:?} is not a port"))
                    .and_then(port_alone);
            }
            let addr: SocketAddr = t
                .parse()
                .map_err(|_| format!("{t:?} is not an address and port"))?;
            if addr.port() == 0 {
                return Err(format!("{t:?}: port 0 is not a fixed port"));
            }
            Ok(addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_loopback_and_an_address_where_it_says() {
        let lo = |p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p);
        assert_eq!(parse_listen(&Listen::Port(9464)), Ok(lo(9464)));
        assert_eq!(parse_listen(&Listen::Text("9464".into())), Ok(lo(9464)));
        assert_eq!(
            parse_listen(&Listen::Text("localhost:9500".into())),
            Ok(lo(9500))
        );
        assert_eq!(
            parse_listen(&Listen::Text("0.0.0.0:9464".into())).map(|a| a.to_string()),
            Ok("0.0.0.0:9464".into())
        );
        assert_eq!(
            parse_listen(&Listen::Text("[::1]:9464".into())).map(|a| a.to_string()),
            Ok("[::1]:9464".into())
        );
        for bad in ["", "host.example:9464", "127.0.0.1", "127.0.0.1:0", "99999"] {
            assert!(parse_listen(&Listen::Text(bad.into())).is_err(), "{bad}");
        }
        assert!(parse_listen(&Listen::Port(0)).is_err());
        assert!(parse_listen(&Listen::Port(70000)).is_err());
    }
}
