//! The application runs with jsonwebtoken on aws-lc-rs (and, through the emulator, its
//! RustCrypto backend too) whether it installs its provider before or after token-refresh
//! first signs: nothing panics and both keep working.

use std::process::Command;

fn run(mode: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_app-with-jsonwebtoken"))
        .arg(mode)
        .output()
        .expect("the application starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "{mode}: {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
}

#[test]
fn the_application_installs_its_provider_at_start_up() {
    run("first");
}

#[test]
fn the_application_installs_its_provider_after_token_refresh_signed() {
    run("later");
}
