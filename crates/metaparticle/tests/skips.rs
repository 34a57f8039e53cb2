//! A test that cannot run here says so in the test run's output, not only when it fails.
//!
//! The test harness captures what passing tests print with `println!`/`eprintln!` and throws it
//! away, so a skip printed that way is a silent `ok`. This runs one skipping test in a child copy of
//! this test binary, with `redis-server` out of reach, and reads what a user would see.

use std::process::Command;

/// The child's test: starts Redis or skips. Does nothing in a normal run.
#[test]
fn child_that_needs_redis() {
    if std::env::var_os("MP_SKIP_CHILD").is_none() {
        return;
    }
    assert!(metaparticle::testing::RedisServer::start_or_skip("child_that_needs_redis").is_none());
}

#[test]
fn a_skipped_test_says_so_in_the_runs_output() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["child_that_needs_redis", "--exact", "--test-threads=1"])
        .env("MP_SKIP_CHILD", "1")
        .env("PATH", "/nonexistent") // no redis-server to find
        .env_remove("MP_REQUIRE_REDIS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child test should pass by skipping: {stdout}{stderr}");
    assert!(
        stderr.contains("child_that_needs_redis: skipped: redis-server not installed"),
        "the skip is not in the run's output:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}
