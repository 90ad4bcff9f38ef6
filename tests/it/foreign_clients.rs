//! Clients that no one here wrote: Python's grpcio, with stubs generated from
//! `proto/` at run time, runs the README walkthrough over TLS against the real
//! binary; a second script discovers the services by reflection alone and calls
//! Health and an admin RPC.
//!
//! The virtual environment is made by `tests/python/setup_venv.sh` under the target
//! directory and reused while `tests/python/requirements.txt` is unchanged. When it
//! cannot be made the test fails; only a machine without `python3` outside CI skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// The venv's python, or `None` (skip) on a developer machine without python3.
fn python() -> Option<PathBuf> {
    let has_python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_python {
        assert!(
            !in_ci(),
            "python3 is required in CI for the foreign-client tests"
        );
        eprintln!("SKIPPED: no python3 on this machine; the foreign-client tests need it");
        return None;
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/setup_venv.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&venv)
        .output()
        .expect("run setup_venv.sh");
    assert!(
        output.status.success(),
        "cannot create the Python virtual environment:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(venv.join("bin/python"))
}

/// Runs a script of tests/python with the venv's python; asserts it exits 0.
fn run_script(python: &Path, script: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let output = Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    println!("{script}:\n{stdout}");
}

#[tokio::test]
async fn python_grpcio_runs_the_walkthrough_over_tls_and_discovers_the_api_by_reflection() {
    let Some(python) = python() else { return };
    let certs = certs::generate();
    let daemon = Serve::new().tls(&certs).start().await;
    // The certificate names localhost and 127.0.0.1; Python checks the name it dials.
    let addr = format!("localhost:{}", daemon.addr().port());
    let ca = certs.ca.to_str().unwrap();
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    run_script(
        &python,
        "walkthrough.py",
        &[
            "--addr",
            &addr,
            "--ca",
            ca,
            "--proto-dir",
            proto_dir.to_str().unwrap(),
            "--operator-key",
            OPERATOR_KEY,
        ],
    );
    run_script(
        &python,
        "reflection_check.py",
        &["--addr", &addr, "--ca", ca, "--operator-key", OPERATOR_KEY],
    );
}
