//! The Prometheus text exposition format (version 0.0.4), written by hand: every family
//! once, with `# HELP` in plain words and `# TYPE`, then its samples. `promtool check
//! metrics` passes on it (tests/metrics.rs).

use std::fmt::Write as _;

use super::{FailureKind, Histogram, LeaseMove, SubMetrics};

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The whole scrape: build info, process metrics, then each subscription's.
pub fn render(version: &str) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let proc_ = super::process::read();
    family(
        &mut out,
        "hubee_sync_build_info",
        "gauge",
        "Always 1; the version label is this build's version.",
    );
    let _ = writeln!(
        out,
        "hubee_sync_build_info{{version=\"{}\"}} 1",
        escape(version)
    );
    proc_.write(&mut out);

    let r = super::lock();
    let subs: Vec<(&String, &SubMetrics)> = r.subs.iter().collect();
    let each = |out: &mut String,
                name: &str,
                kind: &str,
                help: &str,
                value: &dyn Fn(&SubMetrics) -> Option<f64>| {
        family(out, name, kind, help);
        for (sub, m) in &subs {
            if let Some(v) = value(m) {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(sub, m), num(v));
            }
        }
    };
    each(
        &mut out,
        "hubee_sync_schedule_period_seconds",
        "gauge",
        "Longest time the subscription's schedule leaves between two cycles (the interval of \"every\", the largest gap of a cron).",
        &|m| Some(m.period.as_secs_f64()),
    );
    each(
        &mut out,
        "hubee_sync_teledossiers_delivered_total",
        "counter",
        "Télédossiers (new cases and reopened rounds) published in the spool or committed in the business database.",
        &|m| Some(m.delivered_cases as f64),
    );
    each(
        &mut out,
        "hubee_sync_events_delivered_total",
        "counter",
        "Events of the online service (messages, status changes, deposits) delivered as an entry.",
        &|m| Some(m.delivered_events as f64),
    );
    each(
        &mut out,
        "hubee_sync_received_bytes_total",
        "counter",
        "Bytes of files received from the hub (before verification).",
        &|m| Some(m.received_bytes as f64),
    );
    family(
        &mut out,
        "hubee_sync_items_failed_total",
        "counter",
        "Items (a case or an event) that failed in a cycle and will be retried, by kind: hub (the hub failed or refused), local (spool, database, this machine), verify (what the hub sent did not verify).",
    );
    for (sub, m) in &subs {
        for k in FailureKind::ALL {
            let _ = writeln!(
                out,
                "hubee_sync_items_failed_total{{{},kind=\"{}\"}} {}",
                labels(sub, m),
                k.label(),
                m.failed[k as usize]
            );
        }
    }
    each(
        &mut out,
        "hubee_sync_items_parked_total",
        "counter",
        "Items parked: recorded as owed in the state database and their notification deleted, after failing two cycles.",
        &|m| Some(m.parked_total as f64),
    );
    each(
        &mut out,
        "hubee_sync_items_quarantined_total",
        "counter",
        "Items quarantined: given up after quarantine_after, set to SI_INTG_ERROR, a person must look at them.",
        &|m| Some(m.quarantined_total as f64),
    );
    each(
        &mut out,
        "hubee_sync_parked_items",
        "gauge",
        "Items parked now (work owed, retried every cycle), as the state database says after the last cycle.",
        &|m| m.parked.map(|v| v as f64),
    );
    each(
        &mut out,
        "hubee_sync_quarantined_items",
        "gauge",
        "Items in quarantine now, as the state database says after the last cycle.",
        &|m| m.quarantined.map(|v| v as f64),
    );
    each(
        &mut out,
        "hubee_sync_receipt_events_refused_total",
        "counter",
        "Status events of ours the hub refused for good (its cap on events per case); the télédossiers stay delivered.",
        &|m| Some(m.receipt_events_refused as f64),
    );
    each(
        &mut out,
        "hubee_sync_credentials_refused_total",
        "counter",
        "Cycles stopped because the hub refused the subscription's client_id and secret.",
        &|m| Some(m.credentials_refused as f64),
    );
    each(
        &mut out,
        "hubee_sync_outbox_replies_sent_total",
        "counter",
        "Replies of the business software applied on the hub and moved to outbox/sent/.",
        &|m| Some(m.outbox_sent as f64),
    );
    each(
        &mut out,
        "hubee_sync_outbox_replies_failed_total",
        "counter",
        "Replies refused (by our checks or by the hub) and moved to outbox/failed/ with error.txt.",
        &|m| Some(m.outbox_failed as f64),
    );
    each(
        &mut out,
        "hubee_sync_outbox_replies_pending",
        "gauge",
        "Replies in outbox/new/ still to be applied or tried again.",
        &|m| m.outbox_pending.map(|v| v as f64),
    );
    family(
        &mut out,
        "hubee_sync_cycles_total",
        "counter",
        "Cycles run, by outcome: ok (nothing failed) or failed (the cycle stopped, or an item failed).",
    );
    for (sub, m) in &subs {
        let l = labels(sub, m);
        let _ = writeln!(
            out,
            "hubee_sync_cycles_total{{{l},outcome=\"ok\"}} {}",
            m.cycles_ok
        );
        let _ = writeln!(
            out,
            "hubee_sync_cycles_total{{{l},outcome=\"failed\"}} {}",
            m.cycles_failed
        );
    }
    each(
        &mut out,
        "hubee_sync_consecutive_failed_cycles",
        "gauge",
        "Cycles that failed in a row, 0 once one succeeds.",
        &|m| Some(m.consecutive_failures as f64),
    );
    family(
        &mut out,
        "hubee_sync_cycle_duration_seconds",
        "histogram",
        "How long each cycle took, from taking the lock to the report.",
    );
    for (sub, m) in &subs {
        histogram(
            &mut out,
            "hubee_sync_cycle_duration_seconds",
            &labels(sub, m),
            &m.cycle_duration,
        );
    }
    each(
        &mut out,
        "hubee_sync_last_success_timestamp_seconds",
        "gauge",
        "When the last cycle that succeeded ended (Unix time); absent before the first one.",
        &|m| m.last_success_at,
    );
    each(
        &mut out,
        "hubee_sync_last_cycle_timestamp_seconds",
        "gauge",
        "When the last cycle ended, whatever its outcome (Unix time); absent before the first one.",
        &|m| m.last_cycle_at,
    );
    family(
        &mut out,
        "hubee_sync_hub_requests_total",
        "counter",
        "Requests sent to the hub (token requests included), by operation and by class of answer: 2xx, 4xx, 5xx, network (no answer), other.",
    );
    for (sub, m) in &subs {
        let l = labels(sub, m);
        for ((op, class), n) in &m.requests {
            let _ = writeln!(
                out,
                "hubee_sync_hub_requests_total{{{l},operation=\"{op}\",status_class=\"{}\"}} {n}",
                class.label()
            );
        }
    }
    family(
        &mut out,
        "hubee_sync_hub_request_duration_seconds",
        "histogram",
        "Time from sending a request to the hub to its answer's headers, by operation.",
    );
    for (sub, m) in &subs {
        for (op, h) in &m.request_duration {
            histogram(
                &mut out,
                "hubee_sync_hub_request_duration_seconds",
                &format!("{},operation=\"{op}\"", labels(sub, m)),
                h,
            );
        }
    }
    each(
        &mut out,
        "hubee_sync_token_renewals_total",
        "counter",
        "Access tokens obtained from the hub (the first one and every renewal).",
        &|m| Some(m.token_renewals as f64),
    );
    each(
        &mut out,
        "hubee_sync_hub_retries_total",
        "counter",
        "Requests and downloads tried again after a transient failure (network, 429, 5xx, a body that did not verify).",
        &|m| Some(m.retries as f64),
    );
    if r.cluster {
        each(
            &mut out,
            "hubee_sync_lease_held",
            "gauge",
            "1 when this node holds the subscription's lease (several nodes on one PostgreSQL).",
            &|m| Some(if m.lease_held { 1.0 } else { 0.0 }),
        );
        family(
            &mut out,
            "hubee_sync_lease_moves_total",
            "counter",
            "Lease changes seen by this node: taken (free), taken_over (expired), lost (taken by another node), released (given back).",
        );
        for (sub, m) in &subs {
            for mv in LeaseMove::ALL {
                let _ = writeln!(
                    out,
                    "hubee_sync_lease_moves_total{{{},move=\"{}\"}} {}",
                    labels(sub, m),
                    mv.label(),
                    m.lease_moves[mv as usize]
                );
            }
        }
    }
    out
}

/// `# HELP` and `# TYPE` of a family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labels(sub: &str, m: &SubMetrics) -> String {
    format!(
        "subscription=\"{}\",process_code=\"{}\"",
        escape(sub),
        escape(&m.process_code)
    )
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (bound, n) in h.bounds.iter().zip(&h.counts) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            num(*bound)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", num(h.sum));
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// A sample value: integers without a fraction, others as Rust prints them.
pub fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A help text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn numbers_print_as_prometheus_reads_them() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(0.25), "0.25");
        assert_eq!(num(f64::INFINITY), "+Inf");
    }
}
