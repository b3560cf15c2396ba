//! `check`: one line per check, what failed and what to do; and the root guard.

mod common;

use common::{World, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_for_a_working_subscription() {
    let w = World::new().await;
    let (code, out, err) = w.run(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("✓ configuration"), "{out}");
    assert!(out.contains("✓ subscription certdc: token"), "{out}");
    assert!(out.contains("✓ subscription certdc: spool"), "{out}");
    assert!(out.contains("✓ state database"), "{out}");
    assert!(!out.contains('✗'), "{out}");
    assert!(!out.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_secret_says_to_regenerate_it_and_names_the_file() {
    let w = World::new().await;
    common::write_mode(&w.dir.path().join("secret"), "stale-secret\n", 0o600);
    let (code, out, _) = w.run(&["check"]).await;
    assert_eq!(code, 1, "{out}");
    let secret_file = w.dir.path().join("secret");
    let expected = format!(
        "the hub refused client_id certdc-client; regenerate the secret in the HubEE portal (Gestion des abonnements) and update {}",
        secret_file.display()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("✗ subscription certdc: token"));
    assert!(!out.contains("stale-secret"));
}

async fn smtp_greeter() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"220 test ESMTP\r\n").await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reaches_the_smtp_server_and_says_when_it_cannot() {
    let w = World::new().await;
    let port = smtp_greeter().await;
    let cfg = std::fs::read_to_string(w.config_path()).unwrap();
    let with_email = |p: u16| {
        cfg.replacen(
            "[[subscription]]",
            &format!("[email]\nsmtp_url = \"smtp://127.0.0.1:{p}\"\nfrom = \"hubee <hubee@mairie.example>\"\nto = [\"dsi@mairie.example\"]\n\n[[subscription]]"),
            1,
        )
    };
    common::write_mode(&w.config_path(), &with_email(port), 0o640);
    let (code, out, err) = w.run(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("✓ SMTP server"), "{out}");

    // A port where nothing listens.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    common::write_mode(&w.config_path(), &with_email(closed), 0o640);
    let (code, out, _) = w.run(&["check"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("✗ SMTP server") && out.contains("check [email] smtp_url"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_on_a_state_directory_of_the_service_user_is_told_to_use_sudo() {
    use std::os::unix::fs::MetadataExt;
    // Only meaningful as root (as CI runs).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let w = World::new().await;
    let dir = w.dir.path();
    let before = std::fs::metadata(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(65534), None).unwrap();
    let (code, out, err) = w.run(&["status"]).await;
    std::os::unix::fs::chown(dir, Some(before.uid()), None).unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("sudo -u"), "{err}");
    assert!(
        !dir.join("state.db").exists(),
        "no root-owned file left behind"
    );
}
