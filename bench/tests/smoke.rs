//! The benchmark harness in smoke mode: every scenario runs end to end at tiny sizes, so the harness
//! cannot rot. (Figures at these sizes mean nothing; `bench/run` measures.)

use std::process::Command;

#[test]
fn every_scenario_runs_at_smoke_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_urlfleet-bench")).arg("--smoke").output().expect("run urlfleet-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for section in [
        "### 1.", "### 2.", "### 3.", "### 4.", "### 5.", "### 6.", "### 7.", "### 8.", "### 9.", "### 10.", "### 11.",
        "### 13.", "### 14.",
    ] {
        assert!(stdout.contains(section), "missing {section}:\n{stdout}");
    }
    assert!(stdout.contains("| urlfleet |"), "the politeness row is there:\n{stdout}");
}
