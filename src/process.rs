//! Child processes that die with effectc, however it dies (SIGKILL, an OOM kill, a CI
//! timeout): a killed build must not leave an `effectc-nn` writing into a checkpoint
//! folder that the next build is about to use.
//!
//! On Linux each child asks the kernel, before it executes its program, for SIGKILL when
//! its parent goes (`PR_SET_PDEATHSIG`), then checks that the parent is still the
//! process that forked it (it may have died between the fork and the `prctl`). The
//! kernel sends that signal when the *thread* that forked the child ends, not the
//! process, and the scheduler's worker threads end with each build (a long-lived pair
//! server outlives the build that started it, e.g. under `watch`). So every child is
//! forked by one spawner thread that lives as long as the process: [`spawn`].
//!
//! `effectc-nn` also watches its parent itself ([`exit_when_orphaned`]), which covers
//! systems without the parent-death signal. Teacher commands run in their own process
//! group ([`spawn_group`]), so a timeout or a quit kills what they started too; after a
//! SIGKILL of effectc the kernel kills the teacher's direct child, and a program it
//! started in turn is its own business (nothing of effectc's runs to kill it).

use std::collections::BTreeSet;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// The spawner thread's inbox, started on first use; it is never dropped, so the
/// thread lives until the process ends.
fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static S: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    S.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("effectc-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    })
}

/// Makes `cmd`'s process die when this process does (see the module docs).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid,
        // _exit); nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // The parent died before the prctl took effect: nobody wants us.
                    libc::_exit(137);
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Spawns `cmd` tied to this process's life, from the long-lived spawner thread.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    die_with_parent(&mut cmd);
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

fn groups() -> &'static Mutex<BTreeSet<i32>> {
    static G: OnceLock<Mutex<BTreeSet<i32>>> = OnceLock::new();
    G.get_or_init(Default::default)
}

/// A child leading its own process group; dropping it kills the group (everything the
/// program started that is still in it) and reaps the child.
pub struct GroupChild {
    pub child: Child,
    reaped: bool,
}

impl GroupChild {
    /// SIGKILL to the whole group.
    pub fn kill_group(&mut self) {
        if !self.reaped {
            kill_group(self.child.id() as i32);
        }
    }

    /// The leader's exit status once it has exited. The group is killed *before* the
    /// leader is reaped: until then its pid (the group's id) cannot be reused, so the
    /// signal cannot reach a stranger.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        if self.reaped {
            return self.child.try_wait();
        }
        if !exited_unreaped(self.child.id())? {
            return Ok(None);
        }
        self.kill_group();
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(Some(status))
    }

    /// Kills the group and reaps the leader.
    pub fn kill_and_wait(&mut self) -> io::Result<std::process::ExitStatus> {
        self.kill_group();
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(status)
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        let _ = self.kill_and_wait();
        groups()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }
}

/// Whether child `pid` has exited, leaving it unreaped (waitid with WNOWAIT).
#[cfg(target_os = "linux")]
fn exited_unreaped(pid: u32) -> io::Result<bool> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter; si_pid reads the field that
    // waitid fills for a child's state change (0 when none happened, with WNOHANG).
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.si_pid() != 0)
    }
}

#[cfg(not(target_os = "linux"))]
fn exited_unreaped(_pid: u32) -> io::Result<bool> {
    // Without waitid's WNOWAIT here, report "running" until the caller's timeout path
    // or the drop kills and reaps it. (effectc is built and tested on Linux.)
    Ok(false)
}

fn kill_group(pgid: i32) {
    #[cfg(unix)]
    // SAFETY: a plain syscall; a group that is gone gives ESRCH, which is fine.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Spawns `cmd` as the leader of a new process group, tied to this process's life, and
/// remembered so that [`kill_all_groups`] can end it when effectc quits at once.
pub fn spawn_group(mut cmd: Command) -> io::Result<GroupChild> {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    // Hold the registry across the spawn so a concurrent quit cannot miss this group.
    let mut live = groups().lock().unwrap_or_else(|p| p.into_inner());
    let child = spawn(cmd)?;
    live.insert(child.id() as i32);
    Ok(GroupChild {
        child,
        reaped: false,
    })
}

/// Kills every live teacher group: for exits that skip destructors (a second Ctrl-C).
pub fn kill_all_groups() {
    let live = groups().lock().unwrap_or_else(|p| p.into_inner());
    for &pgid in live.iter() {
        kill_group(pgid);
    }
}

/// For a worker process: ends this process (exit code 137) as soon as the parent that
/// started it is gone, checked every half second on a background thread. The kernel's
/// parent-death signal usually comes first; this covers systems without it.
pub fn exit_when_orphaned() {
    #[cfg(unix)]
    {
        // SAFETY: getppid cannot fail.
        let parent = unsafe { libc::getppid() };
        if parent == 1 {
            return; // started by init (or already orphaned): nothing to watch
        }
        let _ = std::thread::Builder::new()
            .name("parent-watch".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                if unsafe { libc::getppid() } != parent {
                    std::process::exit(137);
                }
            });
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    fn alive(pid: i32) -> bool {
        // A zombie has released everything; count only processes still running.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    }

    /// A child that outlives the thread that asked for it by two seconds.
    fn slow_child() -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg("sleep 2");
        c
    }

    #[test]
    fn a_child_spawned_from_a_thread_that_ended_lives_on() {
        // The pair server's case: spawned inside a build whose threads end.
        let mut child = std::thread::spawn(|| spawn(slow_child()).unwrap())
            .join()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), None, "killed with the thread: {status:?}");
        assert!(status.success(), "{status:?}");

        // Control: forked by the short-lived thread itself, the same child dies with it,
        // which is why `spawn` forks on the spawner thread.
        let mut child = std::thread::spawn(|| die_with_parent(&mut slow_child()).spawn().unwrap())
            .join()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn dropping_a_group_child_kills_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("sleep 30 & echo $! > {}; wait", pidfile.display()));
        let g = spawn_group(c).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let grandchild: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the shell never started its child"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(grandchild));
        drop(g);
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(grandchild) {
            assert!(Instant::now() < deadline, "the group's grandchild survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
