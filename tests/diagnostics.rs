//! A corpus of broken recipes (tests/recipes/broken/): each must fail `effectc check`
//! with a diagnostic that names the right file and points into it. The rendered
//! diagnostics are snapshotted: they are what a person reads.
//!
//! A corpus file is the effect's recipe; `// --- file: PATH` starts an extra project
//! file (a stdlib base, say); `// expect: PATH` names the file the diagnostic must cite.

mod common;
use common::*;

fn corpus() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recipes/broken");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

fn project_for(name: &str, text: &str) -> (TestProject, String) {
    let p = TestProject::new();
    let mut parts = text.split("// --- file: ");
    let recipe = parts.next().unwrap();
    p.recipe(name, recipe);
    for part in parts {
        let (path, body) = part.split_once('\n').unwrap();
        p.write(path.trim(), body);
    }
    let expect = recipe
        .lines()
        .find_map(|l| l.strip_prefix("// expect: "))
        .unwrap_or_else(|| panic!("{name}: no `// expect:` line"))
        .trim()
        .to_string();
    (p, expect)
}

#[test]
fn every_broken_recipe_gets_a_diagnostic_in_the_right_file() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 20,
        "the corpus must hold at least 20 broken recipes"
    );
    let mut rendered = String::new();
    for (name, text) in &corpus {
        let (p, expect) = project_for(name, text);
        let run = p.run(&["check", name]);
        assert_eq!(
            run.code(),
            2,
            "{name}: check must exit 2, stderr:\n{}",
            run.stderr()
        );
        let stderr = run
            .stderr()
            .replace(&p.root().display().to_string(), "[PROJECT]");
        // miette prints the file as `╭─[NAME:LINE:COL]`: the span is in the expected file.
        assert!(
            stderr.contains(&format!("[{expect}:")),
            "{name}: expected a span in {expect}:\n{stderr}"
        );
        rendered.push_str(&format!("===== {name}\n{}\n", stderr.trim_end()));
    }
    insta::assert_snapshot!("broken_recipes", rendered);
}

#[test]
fn typos_get_did_you_mean() {
    let p = TestProject::new();
    for (name, text) in corpus() {
        if [
            "unknown-diffusion-node",
            "unknown-model",
            "unknown-base",
            "unknown-top-node",
            "unknown-property",
            "unknown-palette",
            "misspelt-placeholder",
        ]
        .contains(&name.as_str())
        {
            p.recipe(&name, text.split("// --- file: ").next().unwrap());
        }
    }
    let run = p.run(&["check"]);
    let err = run.stderr();
    for hint in [
        "did you mean `controlnet`?",
        "did you mean `sd15`?",
        "did you mean `face-mask`?",
        "did you mean `teacher`?",
        "did you mean `width`?",
        "did you mean `lego-classic`?",
        "did you mean `{attributes}`?",
    ] {
        assert!(err.contains(hint), "missing hint {hint:?} in:\n{err}");
    }
}

/// The `effectc::...` codes of the diagnostics a run printed, sorted.
fn diagnostic_codes(stderr: &str) -> Vec<String> {
    let mut codes: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("effectc::") && !l.contains(' '))
        .map(String::from)
        .collect();
    codes.sort();
    codes
}

#[test]
fn check_says_what_build_says_on_the_shipped_recipes_and_runs_nothing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(effectc_bin())
            .current_dir(root)
            .args(args)
            .arg("--cache")
            .arg(cache.path())
            .env("EFFECTC_MODELS", models.path())
            .output()
            .unwrap()
    };
    let brick = run(&["check", "brick"]);
    assert!(
        brick.status.success(),
        "{}",
        String::from_utf8_lossy(&brick.stderr)
    );
    assert!(String::from_utf8_lossy(&brick.stdout).contains("ok: brick"));
    // lego cannot be built here (no photos, no weights, stages not built yet), and
    // check, which lowers the plan as build does, says so with the same diagnostics.
    let check = run(&["check", "lego"]);
    assert!(
        !cache.path().join("records").exists(),
        "check never touches the cache"
    );
    let build = run(&["build", "lego"]);
    let (check_err, build_err) = (
        String::from_utf8_lossy(&check.stderr),
        String::from_utf8_lossy(&build.stderr),
    );
    assert_eq!(check.status.code(), Some(2), "{check_err}");
    assert_eq!(build.status.code(), Some(2), "{build_err}");
    assert!(!diagnostic_codes(&check_err).is_empty(), "{check_err}");
    assert_eq!(
        diagnostic_codes(&check_err),
        diagnostic_codes(&build_err),
        "check:\n{check_err}\nbuild:\n{build_err}"
    );
}

#[test]
fn check_and_build_agree_on_every_broken_recipe() {
    for (name, text) in corpus() {
        let (p, _) = project_for(&name, &text);
        let check = p.run(&["check", &name]);
        let build = p.run(&["build", &name]);
        assert_eq!(
            check.code(),
            build.code(),
            "{name}: check exits {}, build {}:\n{}\n{}",
            check.code(),
            build.code(),
            check.stderr(),
            build.stderr()
        );
        assert_eq!(
            diagnostic_codes(&check.stderr()),
            diagnostic_codes(&build.stderr()),
            "{name}:\ncheck:\n{}\nbuild:\n{}",
            check.stderr(),
            build.stderr()
        );
    }
}

#[test]
fn lego_without_weights_fails_before_any_work_listing_every_missing_model() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = TestProject::new();
    p.recipe("lego", &std::fs::read_to_string(root.join("effects/lego.kdl")).unwrap().replace("images \"data/portraits/**/*.jpg\"\n        video \"data/clips/*.mp4\" fps=2\n        crop \"face\" size=512", "synthetic count=4\n        crop \"face\" size=64"));
    let models = tempfile::tempdir().unwrap();
    let run = {
        let mut c = p.command(&["build", "--json", "lego"]);
        c.env("EFFECTC_MODELS", models.path());
        let output = c.output().unwrap();
        common::Run {
            events: vec![],
            output,
        }
    };
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let err = run.stderr();
    for model in [
        "sd15",
        "lego-minifig",
        "control-softedge",
        "control-openpose",
        "control-mediapipe-face",
        "instruct-pix2pix",
        "clip-tokenizer",
        // attributes CLIP detects (no sidecars for synthetic items)
        "clip-vit-l14",
        "mediapipe-face-detector",
        "mediapipe-face-landmark",
        "mediapipe-pose-detector",
        "mediapipe-pose-landmark",
    ] {
        assert!(
            err.contains(&format!("  {model} — file")),
            "{model} not listed:\n{err}"
        );
    }
    assert!(
        err.contains("6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"),
        "expected digest shown"
    );
    assert!(
        err.contains("bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
        "the face detector's digest shown"
    );
    assert!(
        !err.contains("not-built-yet") && !err.contains("needs-face-crop"),
        "only the missing weights: {err}"
    );
    assert!(
        err.contains(&models.path().display().to_string()),
        "path searched shown"
    );
    assert!(
        !p.cache_dir().join("records").exists()
            || std::fs::read_dir(p.cache_dir().join("records"))
                .unwrap()
                .count()
                == 0,
        "nothing ran"
    );
}

#[test]
fn every_path_in_a_recipe_stays_inside_its_folder_by_one_rule() {
    let p = TestProject::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("pairs")).unwrap();
    let abs = outside.path().join("pairs").display().to_string();
    p.recipe(
        "dir-abs",
        &format!("effect \"dir-abs\" {{\n    sources {{ synthetic count=2; }}\n    teacher \"directory\" {{ path \"{abs}\"; }}\n}}\n"),
    );
    p.recipe(
        "images-up",
        "effect \"images-up\" {\n    sources { images \"photos/../../x/*.jpg\"; }\n    teacher \"procedural\"\n}\n",
    );
    p.recipe(
        "target-up",
        "effect \"target-up\" {\n    sources { synthetic count=2; }\n    teacher \"procedural\"\n    target \"../onnx\"\n}\n",
    );
    p.write(
        "stdlib/models.kdl",
        "model \"escapee\" file=\"../../etc/weights.safetensors\" arch=\"lora-sd15\"\n",
    );
    let run = p.run(&["check"]);
    assert_eq!(run.code(), 2);
    let err = run.stderr();
    for needle in [
        "is absolute: paths are relative to the project and stay inside it",
        "`photos/../../x/*.jpg` climbs out with `..`: paths are relative to the project",
        "a target profile `../onnx` climbs out with `..`",
        "`../../etc/weights.safetensors` climbs out with `..`: paths are relative to the models",
        "outside the models directory",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    // The documented way to use data elsewhere: a symlink inside the project.
    let q = TestProject::new();
    std::os::unix::fs::symlink(outside.path(), q.root().join("elsewhere")).unwrap();
    // check lowers the plan as build does, so every item needs its pair there.
    for i in 0..2 {
        write_png(
            &outside.path().join(format!("pairs/synthetic-{i:04}.png")),
            i,
            16,
        );
    }
    q.recipe(
        "linked",
        "effect \"linked\" {\n    sources { synthetic count=2; }\n    teacher \"directory\" { path \"elsewhere/pairs\"; }\n}\n",
    );
    let run = q.run(&["check"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
}
