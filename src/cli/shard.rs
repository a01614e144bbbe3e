//! `--shard I/N`, and `--shard auto` / `auto/N`: the slice read from the job engine that
//! started this process, so one script line serves every task of an array.
//!
//! - Slurm job arrays: `SLURM_ARRAY_TASK_ID`. With `auto`, the task's place in the array:
//!   the count from `SLURM_ARRAY_TASK_COUNT` or `SLURM_ARRAY_TASK_MIN`/`MAX` (and `STEP`),
//!   so `--array=1-8` is shards 0..7. With `auto/N`, the task id itself is the shard: a
//!   failed index re-run alone (`sbatch --array=2`, an array of one) is still shard 2 of N.
//! - Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`; a pod is not told the completion
//!   count, so it comes from `auto/N`.
//! - Bazel's test sharding, which CI runners copy: `TEST_SHARD_INDEX`, `TEST_TOTAL_SHARDS`.
//!
//! The engines are tried in that order; the first whose index is set decides.

/// What `--shard` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardSpec {
    /// `I/N`.
    Fixed(usize, usize),
    /// `auto`, or `auto/N` with the count given.
    Auto(Option<usize>),
}

/// A shard and where it came from (`--shard`, or the variable that named it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    pub source: &'static str,
}

pub fn parse(text: &str) -> Result<ShardSpec, String> {
    let t = text.trim();
    let bad = || format!("`{text}`: expected I/N with 0 <= I < N (e.g. 0/4), `auto` or `auto/N`");
    if t == "auto" {
        return Ok(ShardSpec::Auto(None));
    }
    let (i, n) = t.split_once('/').ok_or_else(bad)?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    if i.trim() == "auto" {
        return Ok(ShardSpec::Auto(Some(n)));
    }
    let i: usize = i.trim().parse().map_err(|_| bad())?;
    if i >= n {
        return Err(bad());
    }
    Ok(ShardSpec::Fixed(i, n))
}

/// The variables `--shard auto` reads, for its error message.
pub const AUTO_VARIABLES: &str =
    "SLURM_ARRAY_TASK_ID (a Slurm job array, with SLURM_ARRAY_TASK_COUNT \
or SLURM_ARRAY_TASK_MIN/MAX), JOB_COMPLETION_INDEX (a Kubernetes Indexed Job, with the count as \
--shard auto/N), or TEST_SHARD_INDEX and TEST_TOTAL_SHARDS (Bazel and CI runners)";

/// Resolves the spec, reading the environment through `var` (a function, so tests need
/// no process environment).
pub fn resolve(spec: ShardSpec, var: &dyn Fn(&str) -> Option<String>) -> Result<Shard, String> {
    let given = match spec {
        ShardSpec::Fixed(index, count) => {
            return Ok(Shard {
                index,
                count,
                source: "--shard",
            })
        }
        ShardSpec::Auto(n) => n,
    };
    let num = |name: &'static str| -> Result<Option<usize>, String> {
        match var(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
        {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--shard auto: {name}=`{v}` is not a whole number")),
        }
    };
    let (index, count, source) = if let (Some(id), Some(n)) = (num("SLURM_ARRAY_TASK_ID")?, given) {
        // The task id is the shard; the array may be a subset of 0..N (a re-run).
        return check(id, n, "SLURM_ARRAY_TASK_ID");
    } else if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let count = match (num("SLURM_ARRAY_TASK_COUNT")?, num("SLURM_ARRAY_TASK_MAX")?) {
            (Some(c), _) => Some(c),
            (None, Some(max)) if max >= min => Some((max - min) / step + 1),
            _ => None,
        };
        if id < min || (id - min) % step != 0 {
            return Err(format!(
                "--shard auto: SLURM_ARRAY_TASK_ID={id} is not in the array's range from SLURM_ARRAY_TASK_MIN={min} by {step}: \
                 submit a contiguous array (`--array=0-7`) or pass --shard I/N"
            ));
        }
        ((id - min) / step, count.or(given), "SLURM_ARRAY_TASK_ID")
    } else if let Some(index) = num("JOB_COMPLETION_INDEX")? {
        if given.is_none() {
            return Err(
                "--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but a pod is not told \
                 the completion count: pass --shard auto/N with N = the Job's `completions`"
                    .to_string(),
            );
        }
        (index, given, "JOB_COMPLETION_INDEX")
    } else if let Some(index) = num("TEST_SHARD_INDEX")? {
        let Some(total) = num("TEST_TOTAL_SHARDS")? else {
            return Err(
                "--shard auto: TEST_SHARD_INDEX is set but TEST_TOTAL_SHARDS is not".to_string(),
            );
        };
        (index, Some(total), "TEST_SHARD_INDEX")
    } else {
        return Err(format!(
            "--shard auto: no job engine's shard index in the environment; expected {AUTO_VARIABLES}; \
             or pass --shard I/N"
        ));
    };
    let Some(count) = count else {
        return Err(format!(
            "--shard auto: {source} is set but not the array's size (SLURM_ARRAY_TASK_COUNT or \
             SLURM_ARRAY_TASK_MAX): pass --shard auto/N"
        ));
    };
    if let Some(n) = given.filter(|&n| n != count) {
        return Err(format!(
            "--shard auto/{n}: the job engine says {count} shards ({source}); drop /{n} or make them agree"
        ));
    }
    check(index, count, source)
}

fn check(index: usize, count: usize, source: &'static str) -> Result<Shard, String> {
    if count == 0 || index >= count {
        return Err(format!(
            "--shard auto: {source} gives shard {index} of {count}, outside 0..{count}"
        ));
    }
    Ok(Shard {
        index,
        count,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)], spec: &str) -> Result<(usize, usize, &'static str), String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        resolve(parse(spec)?, &var).map(|s| (s.index, s.count, s.source))
    }

    #[test]
    fn fixed_shards_parse_and_bad_ones_are_refused() {
        assert_eq!(with(&[], "2/4"), Ok((2, 4, "--shard")));
        for bad in ["4/4", "1/0", "x/2", "auto/0", "auto/x", "2"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("auto/8"), Ok(ShardSpec::Auto(Some(8))));
    }

    #[test]
    fn slurm_arrays_give_the_index_from_the_first_task_and_the_count() {
        let s = "SLURM_ARRAY_TASK_ID";
        assert_eq!(
            with(
                &[
                    (s, "3"),
                    ("SLURM_ARRAY_TASK_COUNT", "8"),
                    ("SLURM_ARRAY_TASK_MIN", "0")
                ],
                "auto"
            ),
            Ok((3, 8, s))
        );
        // --array=1-4: task ids 1..4 are shards 0..3.
        assert_eq!(
            with(
                &[
                    (s, "4"),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_MAX", "4")
                ],
                "auto"
            ),
            Ok((3, 4, s))
        );
        // --array=0-6:2 → ids 0,2,4,6.
        assert_eq!(
            with(
                &[
                    (s, "6"),
                    ("SLURM_ARRAY_TASK_MIN", "0"),
                    ("SLURM_ARRAY_TASK_MAX", "6"),
                    ("SLURM_ARRAY_TASK_STEP", "2")
                ],
                "auto"
            ),
            Ok((3, 4, s))
        );
        assert_eq!(with(&[(s, "2")], "auto/4"), Ok((2, 4, s)));
        let e = with(&[(s, "2")], "auto").unwrap_err();
        assert!(e.contains("auto/N"), "{e}");
        // With auto/N the task id is the shard: index 2 re-run alone (`--array=2`).
        let rerun = [
            (s, "2"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
            ("SLURM_ARRAY_TASK_MIN", "2"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
        ];
        assert_eq!(with(&rerun, "auto/4"), Ok((2, 4, s)));
        assert_eq!(
            with(&rerun, "auto"),
            Ok((0, 1, s)),
            "an array of one, without N"
        );
        let e = with(&[(s, "5"), ("SLURM_ARRAY_TASK_COUNT", "8")], "auto/4").unwrap_err();
        assert!(e.contains("outside 0..4"), "{e}");
        // --array=1,5,9: not contiguous, the count does not cover the ids.
        let e = with(
            &[
                (s, "9"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
            ],
            "auto",
        )
        .unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn kubernetes_needs_the_count_and_bazel_gives_both() {
        let k = "JOB_COMPLETION_INDEX";
        assert_eq!(with(&[(k, "5")], "auto/8"), Ok((5, 8, k)));
        let e = with(&[(k, "5")], "auto").unwrap_err();
        assert!(e.contains("--shard auto/N"), "{e}");
        assert!(with(&[(k, "8")], "auto/8").is_err());
        let b = "TEST_SHARD_INDEX";
        assert_eq!(
            with(&[(b, "1"), ("TEST_TOTAL_SHARDS", "3")], "auto"),
            Ok((1, 3, b))
        );
        assert!(with(&[(b, "1")], "auto").is_err());
        assert!(with(&[(b, "x"), ("TEST_TOTAL_SHARDS", "3")], "auto")
            .unwrap_err()
            .contains("whole number"));
    }

    #[test]
    fn no_engine_names_every_variable_it_looked_for() {
        let e = with(&[], "auto").unwrap_err();
        for v in [
            "SLURM_ARRAY_TASK_ID",
            "JOB_COMPLETION_INDEX",
            "TEST_SHARD_INDEX",
            "TEST_TOTAL_SHARDS",
        ] {
            assert!(e.contains(v), "{e}");
        }
    }
}
