//! Each `[[subscription]]` checked: its secret, its spool or business database, its group, and
//! spools that no two subscriptions share.

use super::*;

pub(super) fn validate_subscription(
    s: &SubscriptionInputs,
    email: bool,
    env: &Env,
    errors: &mut Collector,
) -> Option<Subscription> {
    let file = s.file.as_path();
    let dir = file.parent().unwrap_or(Path::new("/"));
    let key = |k: &str| format!("{}.{k}", s.label);

    let name = required(&s.name, file, &key("name"), "name = \"certdc\" (unique; lowercase letters, digits, - and _)", errors).and_then(|n| {
        if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            errors.push(file, key("name"), format!("{n:?} is not a valid name"), "use 1 to 64 lowercase letters, digits, - and _ (it becomes a directory name), e.g. \"certdc\"");
            None
        } else {
            Some(n.clone())
        }
    });
    let process_code = required(&s.process_code, file, &key("process_code"), "process_code = \"CERTDC\" (the démarche's code, as HubEE spells it)", errors).and_then(|p| {
        if p.is_empty() || p.chars().count() > 30 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(file, key("process_code"), format!("{p:?} is not a process code"), "write the démarche's code exactly as HubEE spells it (1 to 30 characters, no spaces), e.g. \"CERTDC\"");
            None
        } else {
            Some(p.clone())
        }
    });
    let client_id = required(
        &s.client_id,
        file,
        &key("client_id"),
        "client_id = \"…\" (from the HubEE portal, Gestion des abonnements)",
        errors,
    )
    .and_then(|c| {
        if c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            errors.push(
                file,
                key("client_id"),
                "is empty or holds spaces",
                "copy the client id from the HubEE portal (Gestion des abonnements) without spaces",
            );
            None
        } else {
            Some(c.clone())
        }
    });
    let secret = secret_source(s, dir, env, errors);
    let schedule = match s.schedule.parse::<Schedule>() {
        Ok(sch) => Some(sch),
        Err(why) => {
            // `why` quotes the schedule and ends with how to write one.
            let (problem, fix) = match why.split_once(" — ") {
                Some((p, f)) => (p.to_string(), f.to_string()),
                None => (
                    why,
                    r#"write a cron with seconds ("0 */5 * * * *") or "every 5m""#.to_string(),
                ),
            };
            errors.push(file, key("schedule"), problem, fix);
            None
        }
    };
    let receipt_status = match &s.receipt_status {
        None => process_code.as_deref().map(CaseStatus::default_receipt_for),
        Some(text) => {
            const RECEIPTS: [&str; 3] = ["SENT", "SI_RECEIVED", "IN_PROGRESS"];
            match text.parse::<CaseStatus>() {
                Ok(st) if st.is_receipt_status() => Some(st),
                Ok(st) => {
                    errors.push(file, key("receipt_status"), format!("{st} is not a receipt status: receiving a case only acknowledges it"), "use SENT, SI_RECEIVED or IN_PROGRESS (or leave it out for the démarche's default); decisions such as DONE go through the outbox");
                    None
                }
                Err(_) => {
                    let fix = match closest(text, RECEIPTS) {
                        Some(c) => format!("did you mean \"{c}\"?"),
                        None => "use SENT, SI_RECEIVED or IN_PROGRESS, or leave it out for the démarche's default".into(),
                    };
                    errors.push(
                        file,
                        key("receipt_status"),
                        format!("{text:?} is not a case status"),
                        fix,
                    );
                    None
                }
            }
        }
    };
    let delivery = delivery(s, name.as_deref(), dir, errors);
    let email_to = if s.email_to.is_empty() {
        Some(Vec::new())
    } else if !email {
        errors.push(
            file,
            key("email_to"),
            "is set, but there is no [email] section to send with",
            "add an [email] section to the main file, or remove email_to",
        );
        None
    } else {
        addresses(&s.email_to, file, &key("email_to"), errors)
    };
    let quarantine_after = duration(
        &s.quarantine_after,
        file,
        &key("quarantine_after"),
        Duration::from_secs(1),
        Duration::from_secs(365 * 86400),
        errors,
    );
    let outbox_retention = duration(
        &s.outbox_retention,
        file,
        &key("outbox_retention"),
        Duration::from_secs(60),
        Duration::from_secs(10 * 365 * 86400),
        errors,
    );
    Some(Subscription {
        name: name?,
        process_code: process_code?,
        client_id: client_id?,
        secret: secret?,
        schedule: schedule?,
        receipt_status: receipt_status?,
        delivery: delivery?,
        email_to: email_to?,
        quarantine_after: quarantine_after?,
        outbox_retention: outbox_retention?,
        source: s.file.clone(),
    })
}

pub(super) fn secret_source(
    s: &SubscriptionInputs,
    dir: &Path,
    env: &Env,
    errors: &mut Collector,
) -> Option<SecretSource> {
    let file = s.file.as_path();
    let given: Vec<&str> = [
        ("client_secret", s.client_secret.is_some()),
        ("client_secret_file", s.client_secret_file.is_some()),
        (
            "client_secret_credential",
            s.client_secret_credential.is_some(),
        ),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    match given.len() {
        0 => {
            errors.push(file, format!("{}.client_secret_file", s.label), "is missing: the subscription has no client secret", "add client_secret_file = \"/etc/hubee-sync/secrets/NAME\" (or client_secret_credential = \"NAME\" under systemd, or client_secret = \"…\")");
            return None;
        }
        1 => {}
        _ => {
            errors.push(file, format!("{}.{}", s.label, given[1]), format!("{} are all set; only one may be", given.join(" and ")), "keep one way to give the secret, preferably client_secret_file or client_secret_credential");
            return None;
        }
    }
    if let Some(secret) = &s.client_secret {
        if secret.trim().is_empty() {
            errors.push(
                file,
                format!("{}.client_secret", s.label),
                "is empty",
                "write the secret from the HubEE portal, or better, put it in a client_secret_file",
            );
            return None;
        }
        return Some(SecretSource::Inline(Secret::new(secret.clone())));
    }
    if let Some(path) = &s.client_secret_file {
        let key = format!("{}.client_secret_file", s.label);
        if path.trim().is_empty() {
            errors.push(file, key, "is empty", "write the path of the file holding the secret, e.g. \"/etc/hubee-sync/secrets/certdc\"");
            return None;
        }
        let source = SecretSource::File(dir.join(path));
        return match source.load_with(None) {
            Ok(_) => Some(source),
            Err(e) => {
                errors.push(file, key, e.problem(), e.fix());
                None
            }
        };
    }
    let name = s.client_secret_credential.as_deref().unwrap_or_default();
    let key = format!("{}.client_secret_credential", s.label);
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        errors.push(
            file,
            key,
            format!("{name:?} is not a credential name"),
            "write the name given to LoadCredential= in the unit, e.g. \"certdc\"",
        );
        return None;
    }
    let source = SecretSource::Credential {
        name: name.to_string(),
    };
    // Under systemd (ExecStartPre=hubee-sync validate) the credential can be checked now;
    // from a shell it cannot, and the daemon will say so at start.
    if let Some(dir) = &env.credentials_directory {
        if let Err(e) = source.load_with(Some(dir)) {
            errors.push(file, key, e.problem(), e.fix());
            return None;
        }
    }
    Some(source)
}

/// Where a subscription's spool is, and its group: `spool` (absolute, no `..`), by default
/// SPOOL_ROOT/NAME; `spool_group` a plain group name.
pub(super) fn spool_location(
    s: &SubscriptionInputs,
    name: Option<&str>,
    errors: &mut Collector,
) -> Option<(PathBuf, Option<String>)> {
    let file = s.file.as_path();
    let key = |k: &str| format!("{}.{k}", s.label);
    let mut ok = true;
    let group = match &s.spool_group {
        Some(g) if !valid_group(g) => {
            errors.push(file, key("spool_group"), format!("{g:?} is not a group name"), "write the name of the group of the software that reads the spool, e.g. \"etatcivil\"");
            ok = false;
            None
        }
        other => other.clone(),
    };
    let path = match &s.spool {
        Some(p) => {
            let path = Path::new(p);
            if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
                errors.push(
                    file,
                    key("spool"),
                    format!("{p:?} is not an absolute path without .."),
                    format!(
                        "write the full path, e.g. \"{}/{}\"",
                        defaults::SPOOL_ROOT,
                        name.unwrap_or("NAME")
                    ),
                );
                return None;
            }
            path.components().collect::<PathBuf>()
        }
        None => Path::new(defaults::SPOOL_ROOT).join(name?),
    };
    ok.then_some((path, group))
}

pub(super) fn delivery(
    s: &SubscriptionInputs,
    name: Option<&str>,
    dir: &Path,
    errors: &mut Collector,
) -> Option<Delivery> {
    let file = s.file.as_path();
    let key = |k: &str| format!("{}.{k}", s.label);
    match s.delivery.as_str() {
        "spool" => {
            let mut ok = true;
            if s.database_url.is_some() {
                errors.push(file, key("database_url"), "is set, but delivery is \"spool\"", "write delivery = \"database\" to deliver into that database, or remove database_url");
                ok = false;
            }
            let (path, group) = spool_location(s, name, errors)?;
            ok.then_some(Delivery::Spool { path, group })
        }
        "database" => {
            // The spool still holds quarantine/ and outbox/ for a database subscription.
            let location = spool_location(s, name, errors);
            let text = required(&s.database_url, file, &key("database_url"), "database_url = \"postgres://user@host/db\" (or \"sqlite:///path/to/file.db\"), since delivery = \"database\"", errors)?;
            let url = match parse_database_url(text, dir) {
                Ok(DbUrl::Sqlite(path)) => Secret::new(format!("sqlite://{}", path.display())),
                Ok(DbUrl::Postgres(url)) => url,
                Err(why) => {
                    errors.push(
                        file,
                        key("database_url"),
                        format!("{} {why}", shown(text)),
                        "write \"postgres://user@host/db\" or \"sqlite:///path/to/file.db\"",
                    );
                    return None;
                }
            };
            let (spool, group) = location?;
            Some(Delivery::Database { url, spool, group })
        }
        other => {
            let fix = match closest(other, ["spool", "database"]) {
                Some(c) => format!("did you mean \"{c}\"?"),
                None => "write \"spool\" or \"database\"".into(),
            };
            errors.push(
                file,
                key("delivery"),
                format!("{other:?} is not a kind of delivery"),
                fix,
            );
            None
        }
    }
}

pub(super) fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 32
        && !g.starts_with('-')
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Two subscriptions writing the same spool, or one spool inside another, would mix or
/// swallow each other's entries.
pub(super) fn check_spools(
    subs: &[Subscription],
    inputs: &[SubscriptionInputs],
    errors: &mut Collector,
) {
    let spools: Vec<(&Path, &Subscription)> = subs
        .iter()
        .map(|s| match &s.delivery {
            Delivery::Spool { path, .. } => (path.as_path(), s),
            Delivery::Database { spool, .. } => (spool.as_path(), s),
        })
        .collect();
    for (i, (path, sub)) in spools.iter().enumerate() {
        for (other_path, other) in &spools[..i] {
            let problem = if path == other_path {
                format!(
                    "{} is also the spool of subscription {:?}",
                    path.display(),
                    other.name
                )
            } else if path.starts_with(other_path) {
                format!(
                    "{} is inside the spool of subscription {:?} ({})",
                    path.display(),
                    other.name,
                    other_path.display()
                )
            } else if other_path.starts_with(path) {
                format!(
                    "{} holds the spool of subscription {:?} ({})",
                    path.display(),
                    other.name,
                    other_path.display()
                )
            } else {
                continue;
            };
            let label = inputs
                .iter()
                .find(|inp| {
                    inp.name.as_deref() == Some(sub.name.as_str()) && inp.file == sub.source
                })
                .map_or_else(|| sub.name.clone(), |inp| inp.label.clone());
            errors.push(
                &sub.source,
                format!("{label}.spool"),
                problem,
                format!(
                    "give each subscription its own spool side by side, e.g. \"{}/{}\"",
                    defaults::SPOOL_ROOT,
                    sub.name
                ),
            );
        }
    }
}

pub(super) enum DbUrl {
    Sqlite(PathBuf),
    Postgres(Secret),
}

/// `sqlite:///abs`, `sqlite://rel/path`, `sqlite:rel` (relative to `dir`), `postgres://…`,
/// `postgresql://…`. The error completes "URL …".
pub(super) fn parse_database_url(text: &str, dir: &Path) -> Result<DbUrl, String> {
    let t = text.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        return match Url::parse(t) {
            Ok(u)
                if u.host_str().is_some_and(|h| !h.is_empty())
                    || u.query().is_some_and(|q| q.contains("host=")) =>
            {
                Ok(DbUrl::Postgres(Secret::new(t.to_string())))
            }
            Ok(_) => Err("has no host".into()),
            Err(e) => Err(format!("is not a URL ({e})")),
        };
    }
    let rest = t
        .strip_prefix("sqlite://")
        .or_else(|| t.strip_prefix("sqlite:"))
        .ok_or_else(|| "is neither sqlite: nor postgres://".to_string())?;
    if rest.is_empty() {
        return Err("names no file".into());
    }
    if rest.contains(":memory:") || rest.starts_with("file:") {
        return Err("is not a file: the record must survive a restart".into());
    }
    if rest.contains('?') {
        return Err("has options after `?`, which are not supported here".into());
    }
    let path = dir.join(rest);
    Ok(DbUrl::Sqlite(path.components().collect()))
}
