//! The diffusion teacher equals diffusers/transformers on tiny random models (fp32, CPU).
//!
//! tests/fixtures/diffusion/ comes from scripts/make_diffusion_fixtures.py: model folders in
//! diffusers' layout, LoRAs in both layouts, a single-file checkpoint, and cases.safetensors
//! with fixed inputs and the reference outputs. Every comparison asserts
//! max|ours − theirs| / max|theirs| ≤ 1e-4 and prints the measured value.

use std::collections::HashMap;
use std::path::PathBuf;

use effectc::diffusion::clip::{ClipTextConfig, ClipTextModel};
use effectc::diffusion::controlnet::ControlNetModel;
use effectc::diffusion::lora::{merge_loras, LoraSpec};
use effectc::diffusion::pipeline::{
    generate_pair, generate_pair_tensors, ControlInput, DiffusionModels, ModelFiles, PairRequest,
    SingleFileConfigs,
};
use effectc::diffusion::scheduler::{ScheduleConfig, Scheduler, SchedulerKind};
use effectc::diffusion::single_file::load_single_file;
use effectc::diffusion::tokenizer::ClipTokenizer;
use effectc::diffusion::unet::{UNet2DConditionModel, UNetConfig};
use effectc::diffusion::vae::{AutoencoderKL, VaeConfig};
use effectc::diffusion::weights::WeightMap;
use effectc::diffusion::DiffusionError;
use image::RgbImage;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

fn cases() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("cases.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap()).unwrap()
}

/// max|a − b| / max|b|
fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "shapes differ");
    let ours = ours.to_kind(Kind::Double);
    let reference = reference.to_kind(Kind::Double);
    let diff = (&ours - &reference).abs().max().double_value(&[]);
    let scale = reference.abs().max().double_value(&[]).max(1e-12);
    diff / scale
}

fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    let e = rel_err(ours, reference);
    println!("{what}: max relative error {e:.3e}");
    assert!(
        e <= TOLERANCE,
        "{what}: relative error {e:.3e} > {TOLERANCE:e}"
    );
    e
}

fn unet(folder: &str) -> UNet2DConditionModel {
    UNet2DConditionModel::load(&fixtures().join(folder), Device::Cpu, Kind::Float).unwrap()
}

fn controlnet(folder: &str) -> ControlNetModel {
    ControlNetModel::load(&fixtures().join(folder), Device::Cpu, Kind::Float).unwrap()
}

#[test]
fn tokenizer_matches_transformers() {
    let tok = ClipTokenizer::load(&fixtures().join("tokenizer")).unwrap();
    let m = meta();
    let cases = m["tokenizer"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(tok.encode(prompt), expected, "prompt {prompt:?}");
    }
}

#[test]
fn clip_text_encoder_matches_transformers() {
    let c = cases();
    let te =
        ClipTextModel::load(&fixtures().join("text_encoder"), Device::Cpu, Kind::Float).unwrap();
    let out = tch::no_grad(|| te.forward(&c["clip.input_ids"]));
    assert_close("CLIP text encoder", &out, &c["clip.last_hidden_state"]);
}

#[test]
fn unet_matches_diffusers() {
    let c = cases();
    let u = unet("unet");
    tch::no_grad(|| {
        let out = u.forward(
            &c["unet.sample"],
            &c["unet.timesteps"],
            &c["unet.encoder_hidden_states"],
            None,
        );
        assert_close("UNet", &out, &c["unet.out"]);
        // 6x10 latents: the up path resizes to odd skip sizes
        let ehs = c["unet.encoder_hidden_states"].narrow(0, 0, 1);
        let odd = u.forward(
            &c["unet.odd_sample"],
            &Tensor::from_slice(&[500f32]),
            &ehs,
            None,
        );
        assert_close("UNet, 6x10 latents", &odd, &c["unet.odd_out"]);
    });
}

#[test]
fn instruct_pix2pix_unet_matches_diffusers() {
    let c = cases();
    let u = unet("unet_ip2p");
    assert_eq!(u.config().in_channels, 8);
    let out = tch::no_grad(|| {
        u.forward(
            &c["ip2p.sample"],
            &c["unet.timesteps"],
            &c["unet.encoder_hidden_states"],
            None,
        )
    });
    assert_close(
        "InstructPix2Pix UNet (linear projections)",
        &out,
        &c["ip2p.out"],
    );
}

#[test]
fn vae_matches_diffusers() {
    let c = cases();
    let vae = AutoencoderKL::load(&fixtures().join("vae"), Device::Cpu, Kind::Float).unwrap();
    tch::no_grad(|| {
        let dist = vae.encode(&c["vae.image"]);
        assert_close("VAE encoder mean", &dist.mean, &c["vae.mean"]);
        assert_close("VAE encoder logvar", &dist.logvar, &c["vae.logvar"]);
        assert_close(
            "VAE decoder",
            &vae.decode(&c["vae.latent"]),
            &c["vae.decoded"],
        );
    });
}

#[test]
fn controlnet_and_multi_controlnet_unet_match_diffusers() {
    let c = cases();
    let (a, b) = (controlnet("controlnet_a"), controlnet("controlnet_b"));
    let u = unet("unet");
    tch::no_grad(|| {
        let (s, t, ehs) = (
            &c["unet.sample"],
            &c["unet.timesteps"],
            &c["unet.encoder_hidden_states"],
        );
        let (down_a, mid_a) = a.forward(
            s,
            t,
            ehs,
            &c["controlnet.cond_a"],
            &Tensor::from_slice(&[0.7f32]),
        );
        assert_eq!(
            down_a.len(),
            9,
            "conv_in + 3 blocks × 2 resnets + 2 downsamplers"
        );
        for (i, d) in down_a.iter().enumerate() {
            assert_close(
                &format!("ControlNet down residual {i}"),
                d,
                &c[&format!("controlnet.a.down.{i}")],
            );
        }
        assert_close("ControlNet mid residual", &mid_a, &c["controlnet.a.mid"]);
        let (down_b, mid_b) = b.forward(
            s,
            t,
            ehs,
            &c["controlnet.cond_b"],
            &Tensor::from_slice(&[0.4f32]),
        );
        let summed = (
            down_a
                .iter()
                .zip(&down_b)
                .map(|(x, y)| x + y)
                .collect::<Vec<_>>(),
            mid_a + mid_b,
        );
        let out = u.forward(s, t, ehs, Some(&summed));
        assert_close(
            "UNet with two ControlNets summed",
            &out,
            &c["controlnet.multi_unet_out"],
        );
    });
}

fn trajectory(kind: SchedulerKind, name: &str, c: &HashMap<String, Tensor>) -> f64 {
    let mut sched = Scheduler::new(kind, ScheduleConfig::sd15(), 10).unwrap();
    let expected_t = Vec::<f64>::try_from(&c[&format!("sched.{name}.timesteps")]).unwrap();
    assert_eq!(sched.timesteps(), &expected_t[..], "{name} timesteps");
    let init = c[&format!("sched.{name}.init_noise_sigma")].double_value(&[0]);
    assert!(
        (sched.init_noise_sigma() - init).abs() <= 1e-6 * init,
        "{name} init_noise_sigma {} vs {init}",
        sched.init_noise_sigma()
    );
    let cst = &c["sched.c"];
    let mut x = &c["sched.x0"] * sched.init_noise_sigma();
    let mut worst: f64 = 0.0;
    for i in 0..10 {
        let t = sched.timesteps()[i];
        let xin = sched.scale_model_input(&x, i);
        // the fixture's stand-in model: tanh(x)·cos(t/1000) + 0.1·c
        let eps = xin.tanh() * (t / 1000.0).cos() + cst * 0.1;
        let noise = c.get(&format!("sched.{name}.noise.{i}"));
        x = sched.step(&eps, i, &x, noise).unwrap();
        worst = worst.max(assert_close(
            &format!("{name} step {i}"),
            &x,
            &c[&format!("sched.{name}.x.{i}")],
        ));
    }
    // img2img's noising at step 4
    let noised = sched.add_noise(&c["sched.x0"], cst, 4);
    assert_close(
        &format!("{name} add_noise"),
        &noised,
        &c[&format!("sched.{name}.add_noise")],
    );
    worst
}

#[test]
fn schedulers_match_diffusers_over_10_steps() {
    let c = cases();
    for (kind, name) in [
        (SchedulerKind::Ddim, "ddim"),
        (SchedulerKind::EulerAncestral, "euler_a"),
        (SchedulerKind::DpmPp2M { karras: false }, "dpmpp_2m"),
        (SchedulerKind::DpmPp2M { karras: true }, "dpmpp_2m_karras"),
    ] {
        let worst = trajectory(kind, name, &c);
        println!("{name}: worst over the trajectory {worst:.3e}");
    }
}

/// UNet and text encoder weights from the fixture folders, with LoRAs merged.
fn lora_models(loras: &[LoraSpec]) -> (UNet2DConditionModel, ClipTextModel) {
    let unet_w =
        WeightMap::load(&fixtures().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let te_w = WeightMap::load(&fixtures().join("text_encoder/model.safetensors")).unwrap();
    merge_loras(&unet_w, &te_w, loras).unwrap();
    let u = UNet2DConditionModel::new(
        &unet_w,
        &UNetConfig::from_file(&fixtures().join("unet/config.json")).unwrap(),
    )
    .unwrap();
    let te = ClipTextModel::new(
        &te_w,
        &ClipTextConfig::from_file(&fixtures().join("text_encoder/config.json")).unwrap(),
    )
    .unwrap();
    (u, te)
}

#[test]
fn lora_merges_match_diffusers() {
    let c = cases();
    let kohya = fixtures().join("lora_kohya.safetensors");
    let peft = fixtures().join("lora_peft.safetensors");
    for (name, loras) in [
        (
            "kohya",
            vec![LoraSpec {
                path: kohya.clone(),
                weight: 0.7,
            }],
        ),
        (
            "peft",
            vec![LoraSpec {
                path: peft.clone(),
                weight: 1.0,
            }],
        ),
        (
            "both",
            vec![
                LoraSpec {
                    path: kohya.clone(),
                    weight: 0.8,
                },
                LoraSpec {
                    path: peft.clone(),
                    weight: 0.5,
                },
            ],
        ),
    ] {
        let (u, te) = lora_models(&loras);
        tch::no_grad(|| {
            let out = u.forward(
                &c["unet.sample"],
                &c["unet.timesteps"],
                &c["unet.encoder_hidden_states"],
                None,
            );
            assert_close(
                &format!("LoRA {name}: UNet"),
                &out,
                &c[&format!("lora.{name}.unet_out")],
            );
            assert_close(
                &format!("LoRA {name}: text encoder"),
                &te.forward(&c["clip.input_ids"]),
                &c[&format!("lora.{name}.te_out")],
            );
        });
    }
}

#[test]
fn lora_key_that_matches_nothing_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stray.safetensors");
    let t = Tensor::ones([2, 8], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[("lora_unet_down_blocks_0_no_such_layer.lora_down.weight", &t)],
        &path,
    )
    .unwrap();
    let unet_w =
        WeightMap::load(&fixtures().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let te_w = WeightMap::load(&fixtures().join("text_encoder/model.safetensors")).unwrap();
    let err = merge_loras(
        &unet_w,
        &te_w,
        &[LoraSpec {
            path: path.clone(),
            weight: 1.0,
        }],
    )
    .unwrap_err();
    assert!(matches!(err, DiffusionError::LoraKeyUnmatched { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("lora_unet_down_blocks_0_no_such_layer.lora_down.weight")
            && msg.contains("stray.safetensors"),
        "{msg}"
    );
}

#[test]
fn single_file_checkpoint_converts_to_the_same_models() {
    let c = cases();
    let unet_config = UNetConfig::from_file(&fixtures().join("unet/config.json")).unwrap();
    let vae_config = VaeConfig::from_file(&fixtures().join("vae/config.json")).unwrap();
    let w = load_single_file(
        &fixtures().join("sd_single_file.safetensors"),
        &unet_config,
        &vae_config,
    )
    .unwrap();
    let u = UNet2DConditionModel::new(&w.unet, &unet_config).unwrap();
    let vae = AutoencoderKL::new(&w.vae, &vae_config).unwrap();
    let te = ClipTextModel::new(
        &w.text_encoder,
        &ClipTextConfig::from_file(&fixtures().join("text_encoder/config.json")).unwrap(),
    )
    .unwrap();
    tch::no_grad(|| {
        let out = u.forward(
            &c["unet.sample"],
            &c["unet.timesteps"],
            &c["unet.encoder_hidden_states"],
            None,
        );
        assert_close("single-file UNet", &out, &c["unet.out"]);
        assert_close(
            "single-file VAE decoder",
            &vae.decode(&c["vae.latent"]),
            &c["vae.decoded"],
        );
        assert_close(
            "single-file VAE encoder",
            &vae.encode(&c["vae.image"]).mean,
            &c["vae.mean"],
        );
        assert_close(
            "single-file text encoder",
            &te.forward(&c["clip.input_ids"]),
            &c["clip.last_hidden_state"],
        );
    });
}

// ------------------------------------------------------------------ pipelines

fn fixture_models(unet_folder: &str) -> DiffusionModels {
    let root = fixtures();
    let mut files = ModelFiles::diffusers_root(&root);
    files.unet = root.join(unet_folder);
    files.controlnets = vec![
        ("a".into(), root.join("controlnet_a")),
        ("b".into(), root.join("controlnet_b")),
    ];
    DiffusionModels::load_with_kind(&files, Device::Cpu, Kind::Float).unwrap()
}

fn rgb(t: &Tensor) -> RgbImage {
    let (h, w) = (t.size()[0] as u32, t.size()[1] as u32);
    RgbImage::from_raw(w, h, Vec::<u8>::try_from(&t.flatten(0, -1)).unwrap()).unwrap()
}

fn requests(name: &str, c: &HashMap<String, Tensor>) -> Vec<PairRequest> {
    let m = meta();
    m["pipelines"][name]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(k, r)| PairRequest {
            prompt: r["prompt"].as_str().unwrap().into(),
            negative_prompt: r["negative_prompt"].as_str().unwrap().into(),
            source: rgb(&c[&format!("pipe.{name}.{k}.source")]),
            controls: r["controls"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(j, cc)| ControlInput {
                    controlnet: cc["name"].as_str().unwrap().into(),
                    image: rgb(&c[&format!("pipe.{name}.{k}.control.{j}")]),
                    weight: cc["weight"].as_f64().unwrap() as f32,
                    start: cc.get("start").and_then(|v| v.as_f64()).unwrap_or(0.0) as f32,
                    end: cc.get("end").and_then(|v| v.as_f64()).unwrap_or(1.0) as f32,
                })
                .collect(),
            image_guidance_scale: r["image_guidance"].as_f64().map(|v| v as f32),
            guidance_scale: r["guidance"].as_f64().unwrap() as f32,
            steps: r["steps"].as_u64().unwrap() as usize,
            scheduler: SchedulerKind::parse(r["scheduler"].as_str().unwrap()).unwrap(),
            seed: r["seed"].as_u64().unwrap(),
            strength: r["strength"].as_f64().unwrap() as f32,
        })
        .collect()
}

fn check_pipeline(name: &str, unet_folder: &str) {
    let c = cases();
    let models = fixture_models(unet_folder);
    let reqs = requests(name, &c);
    let outs = generate_pair_tensors(&models, &reqs).unwrap();
    let latents = Tensor::cat(
        &outs
            .iter()
            .map(|o| o.latents.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let images = Tensor::cat(
        &outs
            .iter()
            .map(|o| o.image.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    assert_close(
        &format!("pipeline {name}: final latents"),
        &latents,
        &c[&format!("pipe.{name}.latents")],
    );
    assert_close(
        &format!("pipeline {name}: final image"),
        &images,
        &c[&format!("pipe.{name}.image")],
    );
    // 8-bit images: diffusers' rounding, at most one level off where a value sits on a .5
    let pngs = generate_pair(&models, &reqs).unwrap();
    let reference = (&c[&format!("pipe.{name}.image")] * 255.0).round();
    for (k, png) in pngs.iter().enumerate() {
        let ours = Tensor::from_slice(png.as_raw())
            .reshape([png.height() as i64, png.width() as i64, 3])
            .permute([2, 0, 1])
            .to_kind(Kind::Double);
        let max_diff = (ours - reference.get(k as i64).to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            max_diff <= 1.0,
            "8-bit image {k} differs by {max_diff} levels"
        );
    }
}

#[test]
fn ip2p_with_two_controlnets_4_steps_euler_a_batch_of_2_matches_diffusers() {
    check_pipeline("ip2p_controlnet", "unet_ip2p");
}

#[test]
fn img2img_with_controlnet_dpmpp_2m_matches_diffusers() {
    check_pipeline("img2img_controlnet", "unet");
}

#[test]
fn txt2img_ddim_matches_diffusers() {
    check_pipeline("txt2img_ddim", "unet");
}

#[test]
fn single_file_checkpoint_runs_the_pipeline_like_diffusers() {
    let c = cases();
    let root = fixtures();
    let configs = SingleFileConfigs {
        unet: UNetConfig::from_file(&root.join("unet/config.json")).unwrap(),
        vae: VaeConfig::from_file(&root.join("vae/config.json")).unwrap(),
        text_encoder: ClipTextConfig::from_file(&root.join("text_encoder/config.json")).unwrap(),
    };
    let models = DiffusionModels::load_single_file(
        &root.join("sd_single_file.safetensors"),
        &root.join("tokenizer"),
        &configs,
        &[],
        &[],
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let outs = generate_pair_tensors(&models, &requests("txt2img_ddim", &c)).unwrap();
    assert_close(
        "single-file txt2img",
        &outs[0].image,
        &c["pipe.txt2img_ddim.image"],
    );
}

#[test]
fn mixed_requests_are_grouped_and_returned_in_order() {
    let c = cases();
    let models = fixture_models("unet");
    let ddim = requests("txt2img_ddim", &c).remove(0);
    let mut euler = ddim.clone();
    euler.scheduler = SchedulerKind::EulerAncestral;
    euler.seed = 99;
    // different schedulers cannot share a loop: two batches, results back in request order
    let outs = generate_pair_tensors(&models, &[euler.clone(), ddim.clone(), euler]).unwrap();
    assert_close(
        "DDIM request between two Euler-a ones",
        &outs[1].image,
        &c["pipe.txt2img_ddim.image"],
    );
    // Same request, same seed: the same image, up to float rounding (two rows of one
    // batch may take different SIMD paths: 1.5e-6 on an AVX-512 machine).
    let same = rel_err(&outs[0].image, &outs[2].image);
    assert!(same < 1e-5, "same request, same seed, same image: {same}");
    assert!(rel_err(&outs[0].image, &outs[1].image) > 1e-3);
}

#[test]
fn pipeline_rejects_bad_requests_with_reasons() {
    let c = cases();
    let models = fixture_models("unet");
    let good = requests("txt2img_ddim", &c).remove(0);
    let mut ip2p = good.clone();
    ip2p.image_guidance_scale = Some(1.5);
    let mut odd = good.clone();
    odd.source = RgbImage::new(60, 64);
    let mut unknown = good.clone();
    unknown.controls.push(ControlInput {
        controlnet: "pose".into(),
        image: good.source.clone(),
        weight: 1.0,
        start: 0.0,
        end: 1.0,
    });
    for (req, needle) in [
        (ip2p, "8-channel"),
        (odd, "multiples of 8"),
        (unknown, "no ControlNet named `pose`"),
    ] {
        let err = generate_pair(&models, &[req]).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
        assert!(err.is_user_error());
    }
}
