//! The harness itself: the test user can run a binary from the bin dir.

use sdk_e2e::{Scratch, TestUser, run_ok};

#[test]
fn test_user_runs_our_binaries_in_its_scratch() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let out = run_ok(user.command(&scratch, "sdk-run").arg("--version"));
    assert!(out.starts_with("sdk-run "), "{out}");
    let id = run_ok(user.command(&scratch, "id").arg("-u"));
    assert_eq!(id.trim(), user.uid.to_string());
}
