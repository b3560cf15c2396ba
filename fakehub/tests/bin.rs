//! The `fake-hubee` binary, as the demo and benchmark scripts drive it.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn binary_serves_seeded_cases_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-hubee"))
        .args([
            "--cases",
            "2",
            "--files",
            "2",
            "--file-size",
            "4K",
            "--seed",
            "5",
        ])
        .args(["--client-id", "cid", "--client-secret", "csecret"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("fake-hubee listening api_url=http://127.0.0.1:"),
        "{line}"
    );
    let api_url = line
        .split("api_url=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let token_url = line.split("token_url=").nth(1).unwrap().trim().to_string();
    assert_eq!(token_url, format!("{api_url}/oauth2/token"));

    let tok = reqwest::Client::new()
        .post(&token_url)
        .basic_auth("cid", Some("csecret"))
        .form(&[("scope", "SI"), ("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(tok.status(), 200);

    let state: Value = reqwest::get(format!("{api_url}/_fake/state"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cases = state["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0]["status"], "HUBEE_NOTIFIED");
    assert_eq!(cases[0]["attachments"].as_array().unwrap().len(), 2);
    assert_eq!(cases[0]["attachments"][0]["size"], 4096);
    assert_eq!(state["notifications"]["cid"].as_array().unwrap().len(), 2);
    assert_eq!(state["requestCounts"]["Token"], 1);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[test]
fn binary_rejects_unknown_arguments_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_fake-hubee"))
        .args(["--file-size", "12Q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: fake-hubee"));
}
