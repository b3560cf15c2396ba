//! Behaviour of the whole loading pipeline, on real files in temporary directories.

use super::*;

#[test]
fn packaged_example_validates_with_zero_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/hubee-sync.toml"
    ))
    .unwrap();
    // The example includes /etc/hubee-sync/conf.d, which need not exist here.
    let text = text.replace("/etc/hubee-sync/conf.d/*.toml", "conf.d/*.toml");
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let path = dir.path().join("hubee-sync.toml");
    std::fs::write(&path, text).unwrap();
    let settings = load_with(&path, &Env::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(settings.subscriptions.is_empty());
    assert!(settings.email.is_none());
    assert_eq!(
        settings.hub.api_url.as_str(),
        "https://api.bas.hubee.numerique.gouv.fr/"
    );
}
