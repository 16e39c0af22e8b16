//! Issue 21: the OpenAPI document is good enough for an off-the-shelf
//! generator. openapi-python-client (PyPI, installed by scripts/test.sh)
//! generates a client from a running node's `/openapi.json`, and the
//! README's walk-through runs with it (`python/walkthrough.py`): a
//! workspace, a key, the verify API, rotation, revocation.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::support::{installed_tool, TestApp};

/// What the generator cannot use, and why that is right: `/metrics` is
/// OpenMetrics text for Prometheus, not JSON for a client.
const EXPECTED_WARNINGS: [&str; 1] = ["WARNING parsing GET /metrics within operations."];

fn walkthrough() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/python/walkthrough.py")
}

async fn run(program: &Path, args: &[&str], dir: &Path, pythonpath: Option<&Path>) -> (bool, String) {
    let mut command = tokio::process::Command::new(program);
    command.args(args).current_dir(dir).stdin(Stdio::null());
    if let Some(path) = pythonpath {
        command.env("PYTHONPATH", path);
    }
    let output = command.output().await.expect("the program runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), printed)
}

#[tokio::test]
async fn a_python_client_generated_from_the_document_runs_the_walk_through() {
    let Some(generator) = installed_tool("KEYGATE_TEST_OPENAPI_PYTHON_CLIENT", "openapi-python-client") else {
        return;
    };
    let generator = PathBuf::from(generator);
    let app = TestApp::start().await;
    let document = app
        .http
        .get(format!("{}/openapi.json", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("openapi.json"), document).unwrap();
    // No formatter is installed, and none is needed to run the client.
    std::fs::write(dir.path().join("config.yml"), "post_hooks: []\n").unwrap();

    let args = [
        "generate",
        "--path",
        "openapi.json",
        "--meta",
        "none",
        "--config",
        "config.yml",
    ];
    let (generated, printed) = run(&generator, &args, dir.path(), None).await;
    assert!(generated, "{printed}");
    let warnings: Vec<&str> = printed.lines().filter(|line| line.starts_with("WARNING")).collect();
    assert_eq!(warnings, EXPECTED_WARNINGS, "{printed}");

    let python = generator.with_file_name("python");
    let script = walkthrough();
    let args = [script.to_str().unwrap(), &app.admin, &app.admin_key];
    let (walked, printed) = run(&python, &args, dir.path(), Some(dir.path())).await;
    assert!(walked && printed.contains("walk-through done"), "{printed}");
}
