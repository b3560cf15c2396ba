//! The `[hub]` section checked: URLs, the editor's name, the CA file, limits and retries.

use super::*;

pub(super) fn validate_hub(
    h: &HubInputs,
    file: &Path,
    dir: &Path,
    errors: &mut Collector,
) -> Option<HubSettings> {
    let api_url = required(&h.api_url, file, "hub.api_url", "api_url = \"https://api.bas.hubee.numerique.gouv.fr\" to [hub] (production: https://api.hubee.numerique.gouv.fr)", errors)
        .and_then(|v| hub_url(v, file, "hub.api_url", errors));
    let token_url = required(&h.token_url, file, "hub.token_url", "token_url = \"https://auth.bas.hubee.numerique.gouv.fr/oauth2/token\" to [hub] (production: https://auth.hubee.numerique.gouv.fr/oauth2/token)", errors)
        .and_then(|v| hub_url(v, file, "hub.token_url", errors));
    let editor = required(
        &h.editor_name,
        file,
        "hub.editor_name",
        "editor_name = \"Commune de …\" (your organisation, as registered with HubEE) to [hub]",
        errors,
    )
    .and_then(|v| editor_name(v, file, errors));

    let application_name = {
        let a = &h.application_name;
        if a.is_empty() || a.len() > 50 || !a.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            errors.push(
                file,
                "hub.application_name",
                format!("{a:?} must be 1 to 50 plain ASCII characters"),
                format!(
                    "write application_name = \"{}\" or leave it out",
                    defaults::APPLICATION_NAME
                ),
            );
            None
        } else {
            Some(a.clone())
        }
    };
    let proxy = match &h.proxy {
        None => Some(None),
        Some(p) => match Url::parse(p) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                Some(Some(u))
            }
            _ => {
                errors.push(file, "hub.proxy", format!("{} is not an http:// or https:// proxy URL", shown(p)), "write proxy = \"http://proxy.rie.example:3128\", or leave it out to use HTTPS_PROXY/NO_PROXY");
                None
            }
        },
    };
    let ca_file = ca_file(
        h.ca_file.as_deref(),
        dir,
        file,
        "hub.ca_file",
        "put the CA certificate(s) in it in PEM form (-----BEGIN CERTIFICATE-----)",
        "create it with the extra CA certificate(s) in PEM form, readable by the service, or remove ca_file",
        errors,
    );

    let timeout = duration(
        &h.timeout,
        file,
        "hub.timeout",
        Duration::from_secs(1),
        Duration::from_secs(3600),
        errors,
    );
    let max_parallel_downloads = number(
        h.max_parallel_downloads,
        file,
        "hub.max_parallel_downloads",
        1,
        64,
        errors,
    );
    let max_parallel_subscriptions = number(
        h.max_parallel_subscriptions,
        file,
        "hub.max_parallel_subscriptions",
        1,
        64,
        errors,
    );
    let max_parallel_cases = number(
        h.max_parallel_cases,
        file,
        "hub.max_parallel_cases",
        1,
        64,
        errors,
    );
    let retry_attempts = number(h.retry_attempts, file, "hub.retry_attempts", 1, 20, errors);
    let download_attempts = number(
        h.download_attempts,
        file,
        "hub.download_attempts",
        1,
        20,
        errors,
    );
    let retry_base_delay = duration(
        &h.retry_base_delay,
        file,
        "hub.retry_base_delay",
        Duration::from_millis(1),
        Duration::from_secs(3600),
        errors,
    );
    let retry_max_delay = duration(
        &h.retry_max_delay,
        file,
        "hub.retry_max_delay",
        Duration::from_millis(1),
        Duration::from_secs(86400),
        errors,
    );
    if let (Some(base), Some(max)) = (retry_base_delay, retry_max_delay) {
        if max < base {
            errors.push(
                file,
                "hub.retry_max_delay",
                format!(
                    "{:?} is shorter than retry_base_delay ({:?})",
                    h.retry_max_delay, h.retry_base_delay
                ),
                "make retry_max_delay at least retry_base_delay",
            );
        }
    }
    let (editor_name, editor_name_header) = editor?;
    Some(HubSettings {
        api_url: api_url?,
        token_url: token_url?,
        editor_name,
        editor_name_header,
        application_name: application_name?,
        proxy: proxy?,
        ca_file: ca_file?,
        timeout: timeout?,
        max_parallel_downloads: usize::try_from(max_parallel_downloads?).ok()?,
        max_parallel_subscriptions: usize::try_from(max_parallel_subscriptions?).ok()?,
        max_parallel_cases: usize::try_from(max_parallel_cases?).ok()?,
        retry_attempts: u32::try_from(retry_attempts?).ok()?,
        retry_base_delay: retry_base_delay?,
        retry_max_delay: retry_max_delay?,
        download_attempts: u32::try_from(download_attempts?).ok()?,
    })
}

pub(super) fn editor_name(
    name: &str,
    file: &Path,
    errors: &mut Collector,
) -> Option<(String, String)> {
    if name.trim().is_empty() {
        errors.push(
            file,
            "hub.editor_name",
            "is empty",
            "write your organisation's name, e.g. editor_name = \"Commune de Saint-Exemple\"",
        );
        return None;
    }
    if name.chars().any(char::is_control) {
        errors.push(
            file,
            "hub.editor_name",
            "holds a control character (a line break or tab)",
            "write the name on one line",
        );
        return None;
    }
    let header = to_ascii(name);
    if header.chars().count() > 50 {
        errors.push(file, "hub.editor_name", format!("{name:?} is {} characters long once in ASCII ({header:?}); the hub accepts at most 50", header.chars().count()), "shorten it (abbreviate \"Communauté de communes\" as \"CC\", for instance)");
        return None;
    }
    Some((name.to_string(), header))
}

/// An https URL, or http to a loopback address (a local fake hub); no credentials, no query.
pub(super) fn hub_url(text: &str, file: &Path, key: &str, errors: &mut Collector) -> Option<Url> {
    let mut url = match Url::parse(text.trim()) {
        Ok(u) => u,
        Err(e) => {
            errors.push(
                file,
                key,
                format!("{} is not a URL ({e})", shown(text)),
                "write the full URL, e.g. \"https://api.bas.hubee.numerique.gouv.fr\"",
            );
            return None;
        }
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.host().is_none() || !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
        errors.push(file, key, format!("{} is not an https:// URL", shown(text)), "the hub is reached over https only (http is accepted for localhost, for tests); write \"https://…\"");
        return None;
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        errors.push(
            file,
            key,
            format!("{} has a user, a query or a fragment", shown(text)),
            "write only scheme, host and path: credentials belong in the subscriptions",
        );
        return None;
    }
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Some(url)
}

/// An extra CA file (`[hub] ca_file`, `[email] ca_file`): relative to the config's
/// directory, readable, holding at least one PEM certificate. `Some(None)` when not set,
/// `None` after an error was recorded.
pub(super) fn ca_file(
    value: Option<&str>,
    dir: &Path,
    file: &Path,
    key: &str,
    fix_not_pem: &str,
    fix_unreadable: &str,
    errors: &mut Collector,
) -> Option<Option<PathBuf>> {
    let Some(p) = value else { return Some(None) };
    let path = dir.join(p);
    match std::fs::read(&path) {
        Ok(bytes) if contains(&bytes, b"-----BEGIN CERTIFICATE-----") => Some(Some(path)),
        Ok(_) => {
            errors.push(
                file,
                key,
                format!("{} holds no PEM certificate", path.display()),
                fix_not_pem,
            );
            None
        }
        Err(err) => {
            errors.push(
                file,
                key,
                format!("{} cannot be read: {err}", path.display()),
                fix_unreadable,
            );
            None
        }
    }
}
