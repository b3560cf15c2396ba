//! The `[email]` section checked: the SMTP URL, the addresses, the digest's schedule.

use super::*;

pub(super) fn validate_email(
    e: &EmailInputs,
    file: &Path,
    dir: &Path,
    errors: &mut Collector,
) -> Option<EmailSettings> {
    let smtp_url = required(&e.smtp_url, file, "email.smtp_url", "smtp_url = \"smtp://127.0.0.1:25\" to [email], or remove the [email] section", errors).and_then(|u| {
        match Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "smtp" | "smtps") && url.host_str().is_some_and(|h| !h.is_empty()) => {
                // The email room reads the same URL (email::smtp); only `tls=required`
                // (STARTTLS, refused if the server does not offer it) is a choice here.
                match url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned()) {
                    Some(v) if v != "required" => {
                        errors.push(file, "email.smtp_url", format!("{}: tls={v:?} is not supported", shown(u)), "write ?tls=required for STARTTLS (the connection fails if the server does not offer it), use smtps:// for implicit TLS, or leave tls out for a plain connection to a local relay");
                        None
                    }
                    _ => Some(Secret::new(u.clone())),
                }
            }
            _ => {
                errors.push(file, "email.smtp_url", format!("{} is not an smtp:// or smtps:// URL", shown(u)), "write \"smtp://127.0.0.1:25\", \"smtps://user:pass@host:465\" or \"smtp://host:587?tls=required\"");
                None
            }
        }
    });
    let from = required(
        &e.from,
        file,
        "email.from",
        "from = \"hubee-sync <hubee@mairie.example>\" to [email]",
        errors,
    )
    .and_then(|f| {
        let bare = match (f.rfind('<'), f.ends_with('>')) {
            (Some(i), true) => &f[i + 1..f.len() - 1],
            _ => f.as_str(),
        };
        if loose_address(bare) {
            Some(f.clone())
        } else {
            errors.push(
                file,
                "email.from",
                format!("{f:?} is not an address"),
                "write \"hubee@mairie.example\" or \"hubee-sync <hubee@mairie.example>\"",
            );
            None
        }
    });
    let to = required(
        &e.to,
        file,
        "email.to",
        "to = [\"dsi@mairie.example\"] to [email]",
        errors,
    )
    .and_then(|list| {
        if list.is_empty() {
            errors.push(
                file,
                "email.to",
                "is empty",
                "name at least one recipient: to = [\"dsi@mairie.example\"]",
            );
            return None;
        }
        addresses(list, file, "email.to", errors)
    });
    let digest_schedule = match e.digest_schedule.parse::<Schedule>() {
        Ok(Schedule::Cron(c)) => Some(c),
        Ok(Schedule::Every(_)) => {
            errors.push(file, "email.digest_schedule", format!("{:?} is an interval, but the digest goes out at set times", e.digest_schedule), "write a cron with seconds, e.g. \"0 0 8 * * Mon-Fri\" (8:00, Monday to Friday, Paris time)");
            None
        }
        Err(why) => {
            errors.push(
                file,
                "email.digest_schedule",
                why,
                "write a cron with seconds, e.g. \"0 0 8 * * Mon-Fri\"",
            );
            None
        }
    };
    let alert_after = duration(
        &e.alert_after,
        file,
        "email.alert_after",
        Duration::from_secs(1),
        Duration::from_secs(30 * 86400),
        errors,
    );
    let alert_every = duration(
        &e.alert_every,
        file,
        "email.alert_every",
        Duration::from_secs(60),
        Duration::from_secs(30 * 86400),
        errors,
    );
    let ca_file = ca_file(
        e.ca_file.as_deref(),
        dir,
        file,
        "email.ca_file",
        "put the CA certificate(s) of the SMTP server in it in PEM form (-----BEGIN CERTIFICATE-----)",
        "create it with the SMTP server's CA certificate(s) in PEM form, readable by the service, or remove ca_file",
        errors,
    );

    Some(EmailSettings {
        smtp_url: smtp_url?,
        from: from?,
        to: to?,
        digest_schedule: digest_schedule?,
        send_empty: e.send_empty,
        include_personal_data: e.include_personal_data,
        alert_after: alert_after?,
        alert_every: alert_every?,
        ca_file: ca_file?,
    })
}

/// One `@` with something on both sides, no whitespace, no angle brackets.
pub(super) fn loose_address(a: &str) -> bool {
    let mut parts = a.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && !d.is_empty())
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
}

pub(super) fn addresses(
    list: &[String],
    file: &Path,
    key: &str,
    errors: &mut Collector,
) -> Option<Vec<String>> {
    let mut ok = true;
    for (i, a) in list.iter().enumerate() {
        if !loose_address(a) {
            errors.push(
                file,
                format!("{key}[{}]", i + 1),
                format!("{a:?} is not an address"),
                "write a bare address such as \"dsi@mairie.example\"",
            );
            ok = false;
        }
    }
    ok.then(|| list.to_vec())
}
