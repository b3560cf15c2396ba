//! Test certificates made with openssl: a CA, and a server certificate for one IP address
//! signed by it.

use std::path::Path;
use std::process::Command;

/// In `dir`: `ca.pem` (the CA named `ca_name`, for a `ca_file`), and `SERVER.pem` with
/// `SERVER.key`, a certificate for `ip` (its subjectAltName) signed by that CA.
pub fn make_pki(dir: &Path, ca_name: &str, server: &str, ip: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (key, csr, pem) = (
        format!("{server}.key"),
        format!("{server}.csr"),
        format!("{server}.pem"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca_name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN={ip}"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .expect("write ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &pem,
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
