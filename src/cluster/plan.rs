//! Which leases a node takes and which it gives back (pure: no clock, no I/O).
//!
//! Each node aims at its fair share, `ceil(units / live nodes)`: it takes free, released or
//! expired leases until it holds that many, and gives back (only between two cycles) what
//! it holds beyond it, so that a node that joins gets work and a dead node's work is spread
//! over the others once its leases expire.

use std::collections::HashSet;

use crate::state::LeaseRow;

/// What a node knows when it decides, all read at one instant of the database clock.
pub struct Input<'a> {
    /// This process's instance id (the lease's `holder_instance`).
    pub me: &'a str,
    /// The database clock, ms.
    pub now_ms: i64,
    /// The units of work: the configured subscriptions (and the mail pseudo-unit).
    pub units: &'a [String],
    /// Instances of the nodes whose heartbeat is fresh, this one included.
    pub live: &'a [String],
    /// The lease TTL, ms: a unit expired (or given back) for longer than this is taken even
    /// beyond the fair share, since no node below its share wanted it.
    pub ttl_ms: i64,
    pub leases: &'a [LeaseRow],
    /// Units this node is working right now (a cycle runs): never given back.
    pub busy: &'a HashSet<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Free, released or expired units to try to take (the database decides who wins).
    pub take: Vec<String>,
    /// Units to give back now.
    pub release: Vec<String>,
}

/// `ceil(units / nodes)`, at least 1 when there is any unit.
pub fn fair_share(units: usize, nodes: usize) -> usize {
    units.div_ceil(nodes.max(1))
}

/// Whether a lease can be taken now: never held, released, or expired.
pub fn takeable(lease: Option<&LeaseRow>, now_ms: i64) -> bool {
    match lease {
        None => true,
        Some(l) => l.holder_instance.is_none() || l.expires_at_ms <= now_ms,
    }
}

/// A spread of the units over the nodes: each node prefers its own order, so that nodes
/// starting together do not all race for the same units first.
fn preference(me: &str, unit: &str) -> u64 {
    // FNV-1a: stable across versions and machines.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(unit.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn decide(i: &Input<'_>) -> Decision {
    let lease_of = |u: &str| i.leases.iter().find(|l| l.subscription == u);
    let mut mine: Vec<&str> = i
        .leases
        .iter()
        .filter(|l| l.holder_instance.as_deref() == Some(i.me))
        .map(|l| l.subscription.as_str())
        .collect();
    let mut d = Decision::default();
    // Units no longer configured here: given back.
    for u in mine.iter().filter(|u| !i.units.iter().any(|x| x == *u)) {
        if !i.busy.contains(*u) {
            d.release.push(u.to_string());
        }
    }
    mine.retain(|u| i.units.iter().any(|x| x == u));
    let live_nodes = i.live.len().max(1);
    let share = fair_share(i.units.len(), live_nodes);
    // Another live node below its share: only then is giving back useful (else the unit
    // would wait for nobody).
    let someone_short = i.live.iter().filter(|n| n.as_str() != i.me).any(|n| {
        i.leases
            .iter()
            .filter(|l| l.holder_instance.as_deref() == Some(n.as_str()))
            .filter(|l| l.expires_at_ms > i.now_ms)
            .count()
            < share
    });
    if mine.len() > share && someone_short {
        let mut idle: Vec<&str> = mine
            .iter()
            .copied()
            .filter(|u| !i.busy.contains(*u))
            .collect();
        // Give back those this node likes least, so the choice is stable.
        idle.sort_by_key(|u| std::cmp::Reverse(preference(i.me, u)));
        d.release
            .extend(idle.iter().take(mine.len() - share).map(|u| u.to_string()));
    } else if mine.len() < share {
        let mut free: Vec<&String> = i
            .units
            .iter()
            .filter(|u| !mine.contains(&u.as_str()) && takeable(lease_of(u), i.now_ms))
            .collect();
        free.sort_by_key(|u| preference(i.me, u));
        d.take
            .extend(free.iter().take(share - mine.len()).map(|u| u.to_string()));
    }
    // Units left free for more than a TTL: no node below its share took them (their
    // config may lack them, or they cannot take): taken here anyway, the work must go on.
    for u in i.units {
        let forgotten = lease_of(u).is_some_and(|l| {
            (l.holder_instance.is_none() || l.expires_at_ms <= i.now_ms)
                && l.expires_at_ms.saturating_add(i.ttl_ms) <= i.now_ms
        });
        if forgotten && !mine.contains(&u.as_str()) && !d.take.contains(u) {
            d.take.push(u.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i:02}")).collect()
    }

    fn lease(sub: &str, holder: Option<&str>, expires_at_ms: i64) -> LeaseRow {
        LeaseRow {
            subscription: sub.into(),
            holder: holder.map(|h| h.split(':').next().unwrap_or(h).to_string()),
            holder_instance: holder.map(str::to_string),
            epoch: 1,
            acquired_at_ms: Some(0),
            expires_at_ms,
        }
    }

    /// Live instances: `me`, then `others`.
    fn decide_for(
        me: &str,
        now_ms: i64,
        units: &[String],
        others: &[&str],
        leases: &[LeaseRow],
        busy: &[&str],
    ) -> Decision {
        let busy: HashSet<String> = busy.iter().map(|s| s.to_string()).collect();
        let live: Vec<String> = std::iter::once(me)
            .chain(others.iter().copied())
            .map(str::to_string)
            .collect();
        decide(&Input {
            me,
            now_ms,
            units,
            live: &live,
            ttl_ms: 3000,
            leases,
            busy: &busy,
        })
    }

    #[test]
    fn fair_share_rounds_up() {
        assert_eq!(fair_share(10, 3), 4);
        assert_eq!(fair_share(9, 3), 3);
        assert_eq!(fair_share(1, 3), 1);
        assert_eq!(fair_share(0, 3), 0);
        assert_eq!(fair_share(5, 0), 5, "no live node counted yet: this one");
    }

    #[test]
    fn a_lone_node_takes_everything() {
        let u = units(5);
        let d = decide_for("a:1", 1000, &u, &[], &[], &[]);
        let mut took = d.take.clone();
        took.sort();
        assert_eq!(took, u);
        assert!(d.release.is_empty());
    }

    #[test]
    fn a_new_node_takes_only_what_is_free_up_to_its_share() {
        let u = units(6);
        // a holds four (unexpired), two were given back.
        let mut leases: Vec<LeaseRow> =
            u[..4].iter().map(|s| lease(s, Some("a:1"), 5000)).collect();
        leases.push(lease(&u[4], None, 900));
        leases.push(lease(&u[5], None, 900));
        let d = decide_for("b:1", 1000, &u, &["a:1"], &leases, &[]);
        let mut took = d.take.clone();
        took.sort();
        assert_eq!(took, vec![u[4].clone(), u[5].clone()]);
    }

    #[test]
    fn an_over_share_node_gives_back_idle_units_only() {
        let u = units(6);
        let leases: Vec<LeaseRow> = u.iter().map(|s| lease(s, Some("a:1"), 5000)).collect();
        // Three live nodes: share 2; a holds 6 and works on four of them right now.
        let others = ["b:1", "c:1"];
        let d = decide_for(
            "a:1",
            1000,
            &u,
            &others,
            &leases,
            &["s00", "s01", "s02", "s03"],
        );
        assert!(d.take.is_empty());
        let mut rel = d.release.clone();
        rel.sort();
        assert_eq!(rel, vec!["s04".to_string(), "s05".to_string()]);
        // Idle, it gives back four.
        let d = decide_for("a:1", 1000, &u, &others, &leases, &[]);
        assert_eq!(d.release.len(), 4);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_an_unexpired_one_never() {
        let u = units(2);
        let leases = vec![
            lease("s00", Some("dead:7"), 999),
            lease("s01", Some("c:1"), 1001),
        ];
        let d = decide_for("b:1", 1000, &u, &["c:1"], &leases, &[]);
        assert_eq!(d.take, vec!["s00".to_string()], "{d:?}");
    }

    #[test]
    fn an_over_share_node_keeps_what_no_node_below_its_share_would_take() {
        let u = units(6);
        // b and c already hold their share (2 each); a holds its 2 and 2 more.
        let mut leases: Vec<LeaseRow> = Vec::new();
        for (i, s) in u.iter().enumerate() {
            let h = ["a:1", "a:1", "b:1", "b:1", "c:1", "c:1"][i];
            leases.push(lease(s, Some(h), 5000));
        }
        leases[4].holder_instance = Some("a:1".into());
        leases[5].holder_instance = Some("a:1".into());
        // Now c holds nothing: a gives back 2.
        let d = decide_for("a:1", 1000, &u, &["b:1", "c:1"], &leases, &[]);
        assert_eq!(d.release.len(), 2, "{d:?}");
        // If c is gone from the live nodes, share is 3: a keeps its 4? It is above 3, but
        // b holds 2 < 3: a gives back 1 for b.
        let d = decide_for("a:1", 1000, &u, &["b:1"], &leases, &[]);
        assert_eq!(d.release.len(), 1, "{d:?}");
        // b at its share too (3): nobody is short, a keeps everything.
        leases[0].holder_instance = Some("b:1".into());
        let d = decide_for("a:1", 1000, &u, &["b:1"], &leases, &[]);
        assert!(d.release.is_empty(), "{d:?}");
    }

    #[test]
    fn a_unit_free_for_longer_than_a_ttl_is_taken_beyond_the_share() {
        let u = units(4);
        let leases = vec![
            lease("s00", Some("a:1"), 9000),
            lease("s03", Some("a:1"), 9000),
            lease("s01", None, 500), // given back 500 ms ago: for those below their share
            lease("s02", None, -2500), // nobody took it for 3.5 s (TTL 3 s)
        ];
        // a at its share (2 of 4, two live nodes) takes only the forgotten one.
        let d = decide_for("a:1", 1000, &u, &["b:1"], &leases, &[]);
        assert_eq!(d.take, vec!["s02".to_string()], "{d:?}");
    }

    #[test]
    fn a_unit_removed_from_the_config_is_given_back_when_idle() {
        let u = units(1);
        let leases = vec![
            lease("s00", Some("a:1"), 5000),
            lease("gone", Some("a:1"), 5000),
        ];
        let d = decide_for("a:1", 1000, &u, &[], &leases, &[]);
        assert_eq!(d.release, vec!["gone".to_string()]);
        let d = decide_for("a:1", 1000, &u, &[], &leases, &["gone"]);
        assert!(d.release.is_empty(), "not while it is worked");
    }

    #[test]
    fn three_nodes_converge_to_fair_shares_without_overlap() {
        // Simulates rounds: each node decides from the same table; takes succeed only if
        // the unit is still takeable (as the conditional UPDATE does).
        let u = units(10);
        let nodes = ["a:1", "b:1", "c:1"];
        let mut leases: Vec<LeaseRow> = Vec::new();
        for round in 0..6 {
            let live = (round + 1).min(3); // nodes join one per round
            for me in &nodes[..live] {
                let others: Vec<&str> = nodes[..live].iter().copied().filter(|n| n != me).collect();
                let d = decide_for(me, 1000, &u, &others, &leases, &[]);
                for r in &d.release {
                    if let Some(l) = leases.iter_mut().find(|l| &l.subscription == r) {
                        l.holder_instance = None;
                        l.holder = None;
                    }
                }
                for t in &d.take {
                    match leases.iter_mut().find(|l| &l.subscription == t) {
                        Some(l) if takeable(Some(l), 1000) => {
                            l.holder_instance = Some(me.to_string());
                            l.expires_at_ms = 5000;
                        }
                        Some(_) => {}
                        None => leases.push(lease(t, Some(me), 5000)),
                    }
                }
            }
        }
        for me in nodes {
            let n = leases
                .iter()
                .filter(|l| l.holder_instance.as_deref() == Some(me))
                .count();
            assert!((2..=4).contains(&n), "{me} holds {n}: {leases:?}");
        }
        let held = leases
            .iter()
            .filter(|l| l.holder_instance.is_some())
            .count();
        assert_eq!(held, 10, "every unit held by exactly one node");
    }
}
