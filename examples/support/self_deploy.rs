//! Benches that deploy themselves: this program, run as one of its own commands (`up`,
//! `delete`) for one bench app, as a user would run it from a shell.

use std::process::{Command, Stdio};

use metaparticle as mp;

/// This program as `command` of app `app`, its output silenced (the bench prints its own). Not
/// run under cargo's environment, so the deployment records the program, not `cargo run`.
pub fn this_program(command: &str, app: &str) -> Command {
    let me =
        std::env::current_exe().unwrap_or_else(|_| std::env::args_os().next().unwrap_or_default().into());
    let mut this = Command::new(me);
    this.args([command, "--app", app]).env_remove("CARGO").stdout(Stdio::null());
    this
}

/// Runs `up` (made by [`this_program`]) for `app`; an error if it could not run or failed.
pub fn up(mut up: Command, app: &str) -> mp::Result<()> {
    let status = up.status().map_err(|e| mp::Error::io(format!("deploying {app}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(mp::Error::io(format!("deploying {app}"), std::io::Error::other("the deploy command failed")))
    }
}

/// Runs `delete` (made by [`this_program`]), best effort: the bench is ending either way.
pub fn delete(mut delete: Command) {
    let _ = delete.status();
}
