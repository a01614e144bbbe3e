//! CLIP equals transformers' `CLIPModel` on two tiny random configs (fp32, CPU).
//!
//! tests/fixtures/clip/ comes from scripts/make_clip_fixtures.py: two CLIPModel folders
//! (config.json, model.safetensors, the tiny BPE vocabulary), photo.png, and
//! cases.safetensors with fixed inputs and transformers' outputs. Every comparison asserts
//! max|ours − theirs| / max|theirs| ≤ 1e-4 and prints the measured value; the
//! preprocessing of photo.png must give CLIPImageProcessor's pixels (Pillow's bicubic).

use std::collections::HashMap;
use std::path::PathBuf;

use effectc::clip::job::{AttributeQueries, ClipAnswer, ClipJob, ClipWorker, ANSWER_METRIC};
use effectc::clip::model::normalize;
use effectc::clip::preprocess::preprocess;
use effectc::clip::ClipModel;
use effectc::diffusion::job::ModelRef;
use effectc::diffusion::tokenizer::ClipTokenizer;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn cases() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("cases.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn prompts() -> Vec<String> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// max|a − b| / max|b|
fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "shapes differ");
    let ours = ours.to_kind(Kind::Double);
    let reference = reference.to_kind(Kind::Double);
    let diff = (&ours - &reference).abs().max().double_value(&[]);
    diff / reference.abs().max().double_value(&[]).max(1e-12)
}

fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    let e = rel_err(ours, reference);
    println!("{what}: max relative error {e:.3e}");
    assert!(
        e <= TOLERANCE,
        "{what}: relative error {e:.3e} > {TOLERANCE:e}"
    );
}

fn photo_pixels(size: u32) -> Tensor {
    let img = image::open(fixtures().join("photo.png")).unwrap().to_rgb8();
    let s = size as i64;
    Tensor::from_slice(&preprocess(&img, size)).view([1, 3, s, s])
}

#[test]
fn clip_model_equals_transformers_on_tiny_random_configs() {
    let _guard = tch::no_grad_guard();
    let cases = cases();
    let tokenizer = ClipTokenizer::load(&fixtures().join("model_a")).unwrap();
    let ids: Vec<Vec<i64>> = prompts().iter().map(|p| tokenizer.encode(p)).collect();
    let ids = Tensor::from_slice(&ids.concat()).view([ids.len() as i64, -1]);
    assert_eq!(
        Vec::<i64>::try_from(&ids.flatten(0, -1)).unwrap(),
        Vec::<i64>::try_from(&cases["input_ids"].flatten(0, -1)).unwrap(),
        "the shared tokenizer gives transformers' ids"
    );
    for kind in ["a", "b"] {
        let model = ClipModel::load(
            &fixtures().join(format!("model_{kind}")),
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        let c = |name: &str| &cases[&format!("{kind}.{name}")];
        let size = model.image_size() as u32;
        // The preprocessing: Pillow's bicubic, crop and normalisation, value for value.
        let ours = photo_pixels(size);
        let e = rel_err(&ours, c("photo_pixel_values"));
        println!("{kind}: preprocessing max relative error {e:.3e}");
        assert!(e <= 1e-6, "{kind}: preprocessing differs ({e:.3e})");

        assert_close(
            &format!("{kind}: image features"),
            &model.image_features(c("pixel_values")),
            c("image_features"),
        );
        assert_close(
            &format!("{kind}: text features"),
            &model.text_features(&ids),
            c("text_features"),
        );
        let pixels = Tensor::cat(&[c("pixel_values").shallow_clone(), ours], 0);
        let image_embeds = normalize(&model.image_features(&pixels));
        let text_embeds = normalize(&model.text_features(&ids));
        assert_close(
            &format!("{kind}: image embeds"),
            &image_embeds,
            c("image_embeds"),
        );
        assert_close(
            &format!("{kind}: text embeds"),
            &text_embeds,
            c("text_embeds"),
        );
        let logits = image_embeds.matmul(&text_embeds.tr()) * model.logit_scale();
        assert_close(
            &format!("{kind}: logits per image"),
            &logits,
            c("logits_per_image"),
        );
    }
}

#[test]
fn the_worker_answers_zero_shot_probabilities_from_the_same_numbers() {
    // The worker's probabilities are softmax(logit_scale · cos) over an attribute's
    // options, with one query per option equal to the reference's logits.
    let cases = cases();
    let prompts = prompts();
    let mut worker = ClipWorker::default();
    let job = ClipJob {
        model: ModelRef {
            arch: "clip".into(),
            path: fixtures().join("model_a"),
        },
        tokenizer: None,
        device: "cpu".into(),
        images: vec![fixtures().join("photo.png")],
        attributes: vec![AttributeQueries {
            name: "who".into(),
            options: prompts
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("o{i}"), vec![p.clone()]))
                .collect(),
        }],
    };
    let report = worker.run(&job, Device::Cpu).unwrap();
    assert_eq!(report.metrics["new_queries"], 5);
    let answer: ClipAnswer = serde_json::from_value(report.metrics[ANSWER_METRIC].clone()).unwrap();
    let reference = cases["a.logits_per_image"].get(2).softmax(0, Kind::Double);
    let ours: Vec<f64> = answer.images[0].attributes["who"]
        .iter()
        .map(|(_, p)| *p)
        .collect();
    assert_close(
        "zero-shot probabilities",
        &Tensor::from_slice(&ours),
        &reference,
    );
    assert_close(
        "image embedding",
        &Tensor::from_slice(&answer.images[0].embedding),
        &cases["a.image_embeds"].get(2),
    );
    // A second request embeds no query again (once per build), and gives the same answer.
    let again = worker.run(&job, Device::Cpu).unwrap();
    assert_eq!(again.metrics["new_queries"], 0);
    assert_eq!(again.metrics["models_loaded"], false);
    assert_eq!(again.metrics[ANSWER_METRIC], report.metrics[ANSWER_METRIC]);
}

/// Per-item CPU cost of the vision pass at real sizes (random weights), for the docs:
/// `cargo test --release --test clip_equivalence -- --ignored --nocapture`.
#[test]
#[ignore]
fn cpu_cost_per_item_at_real_sizes() {
    use effectc::clip::ClipConfig;
    use effectc::diffusion::weights::WeightMap;
    let _guard = tch::no_grad_guard();
    let img = image::open(fixtures().join("photo.png")).unwrap().to_rgb8();
    let img = image::imageops::resize(&img, 512, 512, image::imageops::FilterType::Triangle);
    for (name, config) in [
        ("ViT-B/32", ClipConfig::vit_b32()),
        ("ViT-L/14", ClipConfig::vit_l14()),
    ] {
        let model = ClipModel::new(&WeightMap::random(Device::Cpu, Kind::Float), &config).unwrap();
        let size = model.image_size() as u32;
        let run = |n: usize| {
            let started = std::time::Instant::now();
            let px: Vec<Tensor> = (0..n)
                .map(|_| {
                    Tensor::from_slice(&preprocess(&img, size)).view([
                        1,
                        3,
                        size as i64,
                        size as i64,
                    ])
                })
                .collect();
            let e = normalize(&model.image_features(&Tensor::cat(&px, 0)));
            assert_eq!(e.size()[0], n as i64);
            started.elapsed().as_secs_f64()
        };
        run(1); // warm-up
        let one = (0..3).map(|_| run(1)).fold(f64::MAX, f64::min);
        let two = (0..3).map(|_| run(2)).fold(f64::MAX, f64::min);
        let tok = ClipTokenizer::load(&fixtures().join("model_a")).unwrap();
        let ids =
            Tensor::from_slice(&tok.encode("a photo of a person with red hair")).view([1, -1]);
        let started = std::time::Instant::now();
        let _ = model.text_features(&ids);
        let text = started.elapsed().as_secs_f64();
        println!(
            "{name}: attributes item (1 image) {:.0} ms, identity item (2 images) {:.0} ms, one query {:.0} ms, {} threads",
            one * 1e3,
            two * 1e3,
            text * 1e3,
            tch::get_num_threads()
        );
    }
}
