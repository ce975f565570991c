//! Running the `urlfleet` binary from a test, as a user would.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// The binary under test.
pub fn urlfleet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_urlfleet"))
}

/// What a run left: its exit code and both outputs.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary off the async runtime's threads, with `stdin` as its standard input.
pub async fn run_with(mut cmd: Command, stdin: &str) -> Run {
    let stdin = stdin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run urlfleet");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary with nothing on its standard input.
pub async fn run(cmd: Command) -> Run {
    run_with(cmd, "").await
}
