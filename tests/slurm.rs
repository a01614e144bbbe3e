//! Slurm for real: a one-node cluster on loopback (munged, slurmctld and slurmd with this
//! test's own configuration, key and state folder; nothing of the machine's own set-up is
//! read or touched) runs docs/teams.md's scripts verbatim: a job array of `--shard auto`
//! builds against a loopback nginx cache, then the `--dependency=afterok` fan-in. One task's
//! effectc is killed; the documented re-run of that index alone lets the fan-in succeed.
//! Debian's `slurm-wlm` and `munge` (scripts/test-deps.sh installs them); slurmd runs as
//! root, as on any cluster.

mod common;

use common::nginx::{free_port, Nginx};
use common::{effectc_bin, TestProject, SMALL_BRICK};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// docs/teams.md's script marked `<!-- slurm:NAME -->`.
fn doc_script(name: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/teams.md"))
        .unwrap();
    let marker = format!("<!-- slurm:{name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/teams.md has no {marker}"));
    let rest = &doc[at + marker.len()..];
    let start = rest.find("```bash\n").unwrap() + "```bash\n".len();
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_string()
}

fn need(bin: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{bin} not found: install Debian's slurm-wlm and munge (make test does, through scripts/test-deps.sh)")
        })
}

/// The daemons, stopped (killed and reaped) on drop.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    daemons: Vec<Child>,
}

impl Cluster {
    fn start() -> Cluster {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "slurmd must run as root (it does on every cluster): run this test as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        for sub in ["munge", "ctld", "spool"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("munge"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let key: Vec<u8> = (0..1024)
            .map(|i| (i * 131 % 251) as u8 ^ std::process::id() as u8)
            .collect();
        std::fs::write(d.join("munge/munge.key"), key).unwrap();
        std::fs::set_permissions(
            d.join("munge/munge.key"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        let socket = d.join("munge/munge.sock");
        let mut daemons = Vec::new();
        daemons.push(
            Command::new(need("munged"))
                .arg("--foreground")
                .arg("--force")
                .arg(format!(
                    "--key-file={}",
                    d.join("munge/munge.key").display()
                ))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!(
                    "--pid-file={}",
                    d.join("munge/munged.pid").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    d.join("munge/munged.log").display()
                ))
                .arg(format!("--seed-file={}", d.join("munge/seed").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start munged"),
        );
        wait_for(
            "munged's socket",
            || socket.exists(),
            &d.join("munge/munged.log"),
        );
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let (ctld_port, d_port) = (free_port(), free_port());
        let p = d.display();
        let conf = format!(
            "ClusterName=effectc-test\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctld_port}\n\
             SlurmdPort={d_port}\nAuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\n\
             StateSaveLocation={p}/ctld\nSlurmdSpoolDir={p}/spool\nSlurmctldPidFile={p}/ctld.pid\n\
             SlurmdPidFile={p}/slurmd.pid\nSlurmUser=root\nSlurmdUser=root\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n\
             SchedulerType=sched/builtin\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n\
             ReturnToService=2\nJobCompType=jobcomp/none\nAccountingStorageType=accounting_storage/none\n\
             JobAcctGatherType=jobacct_gather/none\nSlurmctldLogFile={p}/slurmctld.log\n\
             SlurmdLogFile={p}/slurmd.log\nNodeName=effectc-node NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n\
             PartitionName=test Nodes=effectc-node Default=YES MaxTime=INFINITE State=UP\n",
            sock = socket.display()
        );
        let conf_path = d.join("slurm.conf");
        std::fs::write(&conf_path, conf).unwrap();
        for (bin, extra) in [
            ("slurmctld", vec![]),
            ("slurmd", vec!["-N", "effectc-node"]),
        ] {
            daemons.push(
                Command::new(need(bin))
                    .arg("-D")
                    .arg("-f")
                    .arg(&conf_path)
                    .args(extra)
                    .env("SLURM_CONF", &conf_path)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("start {bin}: {e}")),
            );
        }
        let cluster = Cluster {
            dir,
            conf: conf_path,
            daemons,
        };
        wait_for(
            "the node to be idle in sinfo",
            || cluster.slurm("sinfo", &["-h", "-o", "%T"]).trim() == "idle",
            &cluster.dir.path().join("slurmd.log"),
        );
        cluster
    }

    /// A Slurm client command against this cluster; its stdout.
    fn slurm(&self, bin: &str, args: &[&str]) -> String {
        let out = Command::new(bin)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A job's (or array task's) state from scontrol, e.g. COMPLETED, FAILED, PENDING.
    fn state(&self, job: &str) -> String {
        let text = self.slurm("scontrol", &["show", "job", job]);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or("UNKNOWN")
            .to_string()
    }

    /// Waits until the job leaves PENDING/RUNNING, returning its final state.
    fn wait_done(&self, job: &str) -> String {
        let mut state = String::new();
        wait_for(
            &format!("job {job} to finish"),
            || {
                state = self.state(job);
                !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "UNKNOWN"]
                    .contains(&state.as_str())
            },
            &self.dir.path().join("slurmctld.log"),
        );
        state
    }

    fn reason(&self, job: &str) -> String {
        let text = self.slurm("scontrol", &["show", "job", job]);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("Reason="))
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.daemons.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `done` (the deadline only bounds a hang), showing `log` when it never comes.
fn wait_for(what: &str, mut done: impl FnMut() -> bool, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "timed out waiting for {what}; {}:\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ran(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "stage-finished" && e["cached"] == false)
        .map(|e| e["stage"].as_str().unwrap().to_string())
        .collect()
}

fn cached(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == "stage-finished" && e["cached"] == true)
        .count()
}

/// Per-item stages end in their item's name.
fn per_item(stage: &str) -> bool {
    stage
        .rsplit('/')
        .next()
        .is_some_and(|s| s.starts_with("synthetic-"))
        && stage.contains('/')
}

fn run_script(
    cluster: &Cluster,
    p: &TestProject,
    env: &BTreeMap<&str, String>,
    script: &str,
) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(p.root())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SLURM_CONF", &cluster.conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_slurm_array_and_its_fan_in_build_what_one_build_ships_and_a_killed_task_reruns_alone() {
    let cluster = Cluster::start();
    let server = Nginx::start(
        "access_log off;\n  client_max_body_size 0;",
        "location / { dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r; }",
    );
    let p = TestProject::new();
    let end = SMALL_BRICK.rfind('}').unwrap();
    p.recipe(
        "small",
        &format!(
            "{}    target \"onnx\" quantize=\"fp32\"\n{}",
            &SMALL_BRICK[..end],
            &SMALL_BRICK[end..]
        ),
    );

    // The reference: one unsharded build, no shared cache.
    let whole_cache = tempfile::tempdir().unwrap();
    let whole = p.run(&[
        "build",
        "--json",
        "--cache",
        whole_cache.path().to_str().unwrap(),
        "small",
    ]);
    assert_eq!(whole.code(), 0, "{}", whole.stderr());
    let whole_bundle = std::fs::read(p.root().join("out/small/bundle-bundle.tar.gz")).unwrap();
    let items: Vec<String> = whole
        .ran_stages()
        .into_iter()
        .filter(|s| per_item(s))
        .collect();
    assert_eq!(
        items.len(),
        18,
        "6 items × synthetic, crop, pairs: {items:?}"
    );
    std::fs::remove_dir_all(p.root().join("out")).unwrap();

    p.write(
        "effectc.kdl",
        &format!(
            "remote-cache \"http://127.0.0.1:{}/effectc\"\n",
            server.port
        ),
    );
    for name in ["pairs.sh", "final.sh"] {
        p.write(name, &doc_script(name));
    }
    // `effectc` on PATH is the real binary; for task 2's first attempt a wrapper kills it
    // (SIGKILL) once its first stage has finished, as a node dying mid-task would.
    let bin = tempfile::tempdir().unwrap();
    let marker = bin.path().join("kill-task-2-once");
    std::fs::write(&marker, "").unwrap();
    let wrapper = format!(
        r#"#!/bin/bash
if [ "${{SLURM_ARRAY_TASK_ID:-}}" = 2 ] && rm "{marker}" 2>/dev/null; then
    coproc EFFECTC {{ exec "{real}" "$@"; }}
    pid=$EFFECTC_PID
    while IFS= read -r line <&"${{EFFECTC[0]}}"; do
        printf '%s\n' "$line"
        case "$line" in *'"event":"stage-finished"'*'"cached":false'*)
            kill -KILL "$pid"; echo "test: killed effectc ($pid)" >&2; exit 137;;
        esac
    done
    exit 137
fi
exec "{real}" "$@"
"#,
        marker = marker.display(),
        real = effectc_bin().display()
    );
    let shim = bin.path().join("effectc");
    std::fs::write(&shim, wrapper).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut env = BTreeMap::new();
    env.insert("EFFECT", "small".to_string());
    env.insert("TMPDIR", scratch.path().display().to_string());
    env.insert(
        "PATH",
        format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );

    let said = run_script(&cluster, &p, &env, &doc_script("submit.sh"));
    println!("submit.sh: {said}");
    let words: Vec<&str> = said.split_whitespace().collect();
    let (array, final_job) = (words[1].trim_end_matches(','), words[3].to_string());
    let mut runs: Vec<(String, Vec<Value>)> = Vec::new();
    for task in 0..4 {
        let id = format!("{array}_{task}");
        let state = cluster.wait_done(&id);
        let ev = events(&p.root().join(format!("effectc-pairs-{array}_{task}.out")));
        println!(
            "task {task}: {state}, ran {:?}, cached {}",
            ran(&ev),
            cached(&ev)
        );
        assert_eq!(
            state,
            if task == 2 { "FAILED" } else { "COMPLETED" },
            "task {task}"
        );
        runs.push((id, ev));
    }
    // The fan-in waits on a dependency that can never be met now.
    wait_for(
        "the fan-in to be marked DependencyNeverSatisfied",
        || cluster.reason(&final_job) == "DependencyNeverSatisfied",
        &cluster.dir.path().join("slurmctld.log"),
    );
    assert_eq!(cluster.state(&final_job), "PENDING");
    println!("fan-in {final_job}: PENDING (DependencyNeverSatisfied)");

    let mut env2 = env.clone();
    env2.insert("final", final_job.clone());
    env2.insert("task", "2".to_string());
    let said = run_script(&cluster, &p, &env2, &doc_script("rerun.sh"));
    println!("rerun.sh: {said}");
    let words: Vec<&str> = said.split_whitespace().collect();
    let (rerun, final_job) = (words[1].trim_end_matches(','), words[3].to_string());
    let rerun_id = format!("{rerun}_2");
    assert_eq!(cluster.wait_done(&rerun_id), "COMPLETED");
    let ev = events(&p.root().join(format!("effectc-pairs-{rerun}_2.out")));
    println!("task 2 re-run: ran {:?}, cached {}", ran(&ev), cached(&ev));
    assert!(
        ev.iter()
            .filter(|e| e["event"] == "stage-finished")
            .all(|e| e["stage"].as_str().unwrap().ends_with("/synthetic-0002")),
        "the re-run built shard 2 of 4 only: {ev:?}"
    );
    assert_eq!(
        cached(&ev),
        ran(&runs[2].1).len(),
        "what the killed attempt finished"
    );
    runs.push((rerun_id, ev));
    assert_eq!(cluster.wait_done(&final_job), "COMPLETED");

    // Every item's work ran exactly once across the array, the killed attempt included
    // (what it finished was in the shared cache, so its re-run did only the rest).
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (id, ev) in &runs {
        for s in ran(ev) {
            assert!(per_item(&s), "{id} ran a whole-dataset stage {s}");
            *count.entry(s).or_default() += 1;
        }
    }
    assert_eq!(count.keys().cloned().collect::<Vec<_>>(), {
        let mut v = items.clone();
        v.sort();
        v
    });
    assert!(count.values().all(|&n| n == 1), "{count:?}");
    assert!(
        !ran(&runs[2].1).is_empty(),
        "the killed task had finished a stage"
    );

    // The fan-in ran only whole-dataset stages, and ships the unsharded build's bundle.
    let fan_in = events(&p.root().join(format!("effectc-final-{final_job}.out")));
    let fan_ran = ran(&fan_in);
    println!(
        "fan-in {final_job}: ran {fan_ran:?}, cached {}",
        cached(&fan_in)
    );
    assert!(
        !fan_ran.is_empty() && fan_ran.iter().all(|s| !per_item(s)),
        "{fan_ran:?}"
    );
    assert_eq!(
        cached(&fan_in),
        items.len(),
        "every item from the shared cache"
    );
    let bundle = std::fs::read(p.root().join(format!("small-{final_job}.tar.gz"))).unwrap();
    assert!(
        bundle == whole_bundle,
        "the fan-in's bundle differs from the unsharded build's"
    );
    // The scripts cleaned up their scratch caches.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}
