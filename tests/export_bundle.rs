//! Export, verification and the bundle, end to end on a tiny trained student.

mod common;
use common::*;

fn with_targets(recipe: &str) -> String {
    recipe.replace("    train {", "    target \"ios-coreml\" quantize=\"fp16\"\n    target \"android-nnapi\" quantize=\"int8\"\n    target \"onnx\" quantize=\"fp32\"\n    train {")
}

#[test]
fn every_target_is_verified_and_the_bundle_is_reproducible() {
    let p = TestProject::new();
    p.recipe("small", &with_targets(SMALL_BRICK));
    let r = p.build("small");
    for (target, bar) in [
        ("onnx", 60.0),
        ("ios-coreml", 50.0),
        ("android-nnapi", 35.0),
    ] {
        let m = &r.stage(&format!("verify:{target}"))["metrics"];
        assert_eq!(m["verified"], true, "{target}: {m}");
        assert!(m["psnr_db"].as_f64().unwrap() >= bar, "{target}: {m}");
        assert!(m["latency_ms"].as_f64().unwrap() > 0.0 && m["size_bytes"].as_u64().unwrap() > 0);
    }
    let out = p.root().join("out/small");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bundle-manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["effect"], "small");
    for key in ["recipe_digest", "files", "student", "targets"] {
        assert!(!manifest[key].is_null(), "manifest lacks {key}");
    }
    // One name per figure: the manifest's figures are the events' under the same names.
    for (side, stage, names) in [
        (
            "student",
            "distill-student",
            &["psnr_vs_pairs_db", "psnr_vs_teacher_db"][..],
        ),
        (
            "teacher",
            "train-teacher",
            &["psnr_vs_pairs_db", "identity_psnr_db"][..],
        ),
    ] {
        for name in names {
            assert_eq!(
                manifest[side][name],
                r.stage(stage)["metrics"][name],
                "manifest {side}.{name}"
            );
        }
    }
    for t in ["onnx", "ios-coreml", "android-nnapi"] {
        let e = &manifest["targets"][t];
        assert_eq!(e["verified"], true);
        for key in [
            "file",
            "format",
            "precision",
            "psnr_db",
            "ssim",
            "size_bytes",
        ] {
            assert!(!e[key].is_null(), "{t} lacks {key}");
        }
        assert!(
            e.get("latency_ms").is_none(),
            "{t}: measured figures stay out of the bundle"
        );
        assert!(
            !e["golden"].as_array().unwrap().is_empty(),
            "{t} has golden frames"
        );
    }
    assert!(manifest["student"]["macs_512"].as_u64().unwrap() > 0);
    // What this machine measured lies beside the bundle, and the report out/ shows it.
    let measured: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bundle-measurements.json")).unwrap())
            .unwrap();
    for t in ["onnx", "ios-coreml", "android-nnapi"] {
        assert!(
            measured["targets"][t]["latency_ms"].as_f64().unwrap() > 0.0,
            "{measured}"
        );
    }
    assert!(measured["machine"]["cpus"].as_u64().unwrap() >= 1);
    let report = std::fs::read_to_string(out.join("bundle-report.html")).unwrap();
    assert!(
        report.contains("<th>latency (tract, 1 thread)</th>") && report.contains(" ms</td>"),
        "{report}"
    );
    // The pictures are in the page itself (tests/report_browser.rs renders it), and the
    // golden frames it links to lie beside it.
    let images = report.matches("<img src=\"data:image/png;base64,").count();
    assert!(images >= 1, "the report shows the contact sheet: {report}");
    assert_eq!(
        images,
        report.matches("<img ").count(),
        "every picture is embedded"
    );
    for part in report.split("href=\"").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            out.join(name).is_file(),
            "report links {name}, absent from out/"
        );
    }
    // Every file the manifest lists is in the tarball with that digest.
    let tar_bytes = std::fs::read(out.join("bundle-bundle.tar.gz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tar_bytes[..]));
    let mut seen = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if let Some(d) = manifest["files"][&path].as_str() {
            assert_eq!(effectc::digest::Digest::of_bytes(&bytes).hex(), d, "{path}");
            seen += 1;
        }
    }
    assert_eq!(seen, manifest["files"].as_object().unwrap().len());

    // Rebuilding the bundle alone from the same inputs gives the same bytes.
    let key = r.stage("bundle")["key"].as_str().unwrap().to_string();
    std::fs::remove_file(
        p.cache_dir()
            .join("records")
            .join(&key[..2])
            .join(format!("{key}.json")),
    )
    .unwrap();
    std::fs::remove_dir_all(p.cache_dir().join("snapshots")).unwrap();
    let again = p.build("small");
    assert_eq!(again.ran_stages(), vec!["bundle".to_string()]);
    assert!(
        std::fs::read(out.join("bundle-bundle.tar.gz")).unwrap() == tar_bytes,
        "bundle bytes differ"
    );

    // `release` writes the bundle and SHA256SUMS, the same twice.
    let rel = p.run(&["release", "small", "--out", "dist"]);
    assert_eq!(rel.code(), 0, "{}", rel.stderr());
    let sums = std::fs::read_to_string(p.root().join("dist/SHA256SUMS")).unwrap();
    assert!(sums.contains("  small-"), "{sums}");
    assert_eq!(
        sums.lines().count(),
        1,
        "only the tarball is summed: {sums}"
    );
    let dist: Vec<String> = std::fs::read_dir(p.root().join("dist"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        dist.iter().any(|f| f.ends_with(".measurements.json"))
            && dist.iter().any(|f| f == "release-report.md"),
        "measurements and the report beside the tarball: {dist:?}"
    );
    let again = p.run(&["release", "small", "--out", "dist"]);
    assert_eq!(
        std::fs::read_to_string(p.root().join("dist/SHA256SUMS")).unwrap(),
        sums
    );
    // The summary table CI logs show: targets with PSNR, sizes, latency, what ran.
    let table = again.stdout();
    assert!(table.contains("| small | "), "{table}");
    assert!(table.contains("onnx ") && table.contains(" dB"), "{table}");
    assert!(
        table.contains("| 0 / "),
        "the second release ran nothing:\n{table}"
    );

    // One effect that fails to build: the others still build, the release fails.
    p.recipe(
        "broken",
        &with_targets(SMALL_BRICK)
            .replace("effect \"small\"", "effect \"broken\"")
            .replace(
                "teacher \"procedural\" {\n        style \"brick-mosaic\"\n        stud-size 4\n        palette \"lego-classic\"\n    }",
                "teacher \"command\" { run \"sh\" \"-c\" \"exit 3\"; }",
            ),
    );
    let failed = p.run(&["release", "--out", "dist2"]);
    assert_eq!(failed.code(), 1, "{}", failed.stderr());
    assert!(
        failed.stdout().contains("| broken | FAILED |"),
        "{}",
        failed.stdout()
    );
    assert!(
        std::fs::read_to_string(p.root().join("dist2/SHA256SUMS"))
            .unwrap()
            .contains("  small-"),
        "the good effect is still released"
    );
}

#[test]
fn two_clean_builds_in_two_checkouts_give_the_same_bundle_bytes() {
    // Two projects (other paths) with empty caches: nothing shared but the recipe.
    let build = || {
        let p = TestProject::new();
        p.recipe("small", &with_targets(SMALL_BRICK));
        let r = p.build("small");
        assert_eq!(r.cached(), 0, "a clean cache runs everything");
        let out = p.root().join("out/small");
        let read = |f: &str| std::fs::read(out.join(f)).unwrap();
        (
            read("bundle-bundle.tar.gz"),
            read("bundle-measurements.json"),
        )
    };
    let (a, measured_a) = build();
    let (b, measured_b) = build();
    assert!(
        a == b,
        "bundle.tar.gz differs between two clean builds ({} vs {} bytes)",
        a.len(),
        b.len()
    );
    // The measurements beside it are this run's own (and may differ); they exist.
    for m in [measured_a, measured_b] {
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert!(m["targets"]["onnx"]["latency_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn a_target_whose_device_lacks_an_op_is_refused_naming_the_op() {
    let p = TestProject::new();
    // A device profile that runs no Tanh: the student ends in one.
    p.write(
        "targets/no-tanh.kdl",
        r#"target "no-tanh" {
    format "onnx"
    precision "fp32"
    ops "Conv" "Relu" "Add" "DepthToSpace" "Pad"
    min-psnr-db fp32=60
    calibration-size 0
}
"#,
    );
    p.recipe(
        "small",
        &SMALL_BRICK.replace("    train {", "    target \"no-tanh\"\n    train {"),
    );
    let r = p.run(&["build", "--json", "small"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let failed = r
        .events
        .iter()
        .find(|e| e["event"] == "stage-failed")
        .unwrap_or_else(|| panic!("no stage failed: {}", r.stdout()));
    assert_eq!(failed["stage"], "target:no-tanh");
    assert_eq!(failed["tier"], "input");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("`Tanh`") && error.contains("targets/no-tanh.kdl"),
        "the refused op and the profile are named: {error}"
    );
    assert!(
        !p.root()
            .join("out/small/target-no-tanh-model.onnx")
            .exists(),
        "nothing was written for the refused target"
    );
}
