//! Child processes killed by PID when their guard drops (also when the
//! test fails), and waiting for a service's admin endpoint to say it serves.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Kills (SIGKILL) and reaps the child on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Sends SIGTERM and waits up to `within` for the exit status.
    pub fn terminate(mut self, within: Duration) -> Option<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `/healthz` on the admin port until it starts with "serving";
/// panics with the last answer after `within`.
pub fn wait_serving(admin_port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let body = crate::healthz(admin_port);
        if body.starts_with("serving") {
            return;
        }
        assert!(Instant::now() < deadline, "service on admin port {admin_port} never served: {body:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
