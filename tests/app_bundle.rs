//! The bundle as an app engineer uses it: every golden frame is fed to its shipped model
//! exactly as the manifest describes the model's input (name, shape, layout, dtype,
//! range), with tract standing in for the phone's runtime (tract-tflite for the
//! `.tflite`, tract-onnx for the `.onnx`, effectc's own Core ML reader and interpreter
//! for the `.mlpackage`), and what comes out must be the golden output.

mod common;
use common::*;
use effectc::bundle::manifest::{Manifest, TensorSpec};
use effectc::bundle::npy::{decode, NpyData};
use std::path::Path;
use tract_onnx::prelude::*;

fn load(path: &Path) -> (Vec<usize>, NpyData) {
    decode(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tensor the app builds: the golden array as it is, with the spec's quantization.
fn tensor(spec: &TensorSpec, shape: &[usize], data: &NpyData) -> Tensor {
    let mut t = match data {
        NpyData::F32(v) => Tensor::from_shape(shape, v).unwrap(),
        NpyData::U8(v) => Tensor::from_shape(shape, v).unwrap(),
        NpyData::I8(v) => Tensor::from_shape(shape, v).unwrap(),
    };
    if let Some(q) = spec.quantization {
        let qp = QParams::ZpScale {
            zero_point: q.zero_point as i32,
            scale: q.scale as f32,
        };
        let dt = match data {
            NpyData::U8(_) => DatumType::QU8(qp),
            _ => DatumType::QI8(qp),
        };
        unsafe { t.set_datum_type(dt) };
    }
    t
}

/// A tract output as real values (dequantized when it is an integer tensor).
fn real(t: &Tensor) -> Vec<f32> {
    let dt = t.datum_type();
    if dt.is_quantized() {
        let (zp, scale) = dt.zp_scale();
        let raw = t
            .cast_to_dt(dt.unquantized())
            .unwrap()
            .cast_to::<i32>()
            .unwrap()
            .into_owned();
        raw.try_as_plain_ram()
            .unwrap()
            .as_slice::<i32>()
            .unwrap()
            .iter()
            .map(|q| (q - zp) as f32 * scale)
            .collect()
    } else {
        let f = t.cast_to::<f32>().unwrap().into_owned();
        f.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }
}

fn golden_as_real(spec: &TensorSpec, data: &NpyData) -> Vec<f32> {
    data.to_f32()
        .iter()
        .map(|v| match spec.quantization {
            Some(q) => ((*v as f64 - q.zero_point as f64) * q.scale) as f32,
            None => *v,
        })
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_golden_frame_fed_as_the_manifest_says_gives_the_golden_output() {
    let p = TestProject::new();
    p.recipe(
        "small",
        &SMALL_BRICK.replace(
            "    train {",
            "    target \"ios-coreml\" quantize=\"fp16\"\n    target \"android-nnapi\" quantize=\"int8\"\n    target \"onnx\" quantize=\"fp32\"\n    train {",
        ),
    );
    p.build("small");
    let bundle = tempfile::tempdir().unwrap();
    let tar = std::fs::read(p.root().join("out/small/bundle-bundle.tar.gz")).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(&tar[..]))
        .unpack(bundle.path())
        .unwrap();
    let root = bundle.path();
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    // The crop is 32 px: TFLite takes NHWC, ONNX NCHW, Core ML a 32×32 RGB image.
    let expected = [
        ("android-nnapi", vec![1, 32, 32, 3], "NHWC"),
        ("onnx", vec![1, 3, 32, 32], "NCHW"),
        ("ios-coreml", vec![32, 32, 3], "HWC"),
    ];
    for (name, shape, layout) in expected {
        let t = &manifest.targets[name];
        let (i, o) = (t.input.as_ref().unwrap(), t.output.as_ref().unwrap());
        assert_eq!(
            (&i.shape, i.layout.as_str()),
            (&shape, layout),
            "{name} input: {i:?}"
        );
        assert_eq!(
            (&o.shape, o.layout.as_str()),
            (&shape, layout),
            "{name} output: {o:?}"
        );
        assert_eq!(i.colour, "RGB");
        assert!(!i.name.is_empty() && !o.name.is_empty());
        assert!(!t.golden.is_empty(), "{name} has golden frames");
        let model_path = root.join(&t.file);
        for g in &t.golden {
            let (in_shape, in_data) = load(&root.join(&g.input));
            let (out_shape, out_data) = load(&root.join(&g.output));
            assert_eq!(in_shape, i.shape, "{}", g.input);
            assert_eq!(in_data.dtype(), i.dtype, "{}", g.input);
            assert_eq!(out_shape, o.shape, "{}", g.output);
            assert_eq!(out_data.dtype(), o.dtype, "{}", g.output);
            let want = golden_as_real(o, &out_data);
            let (got, tolerance) = match t.format.as_str() {
                "onnx" => {
                    let model = tract_onnx::onnx()
                        .model_for_path(&model_path)
                        .unwrap()
                        .into_optimized()
                        .unwrap()
                        .into_runnable()
                        .unwrap();
                    let out = model
                        .run(tvec!(tensor(i, &in_shape, &in_data).into_tvalue()))
                        .unwrap_or_else(|e| {
                            panic!("{name}: {} as the manifest says: {e:#}", g.input)
                        });
                    let out = out[0].clone().into_tensor();
                    assert_eq!(out.shape(), &o.shape[..], "{name} output shape");
                    (real(&out), 1e-4)
                }
                "tflite" => {
                    // tract-tflite has no QUANTIZE / DEQUANTIZE: run the int8 core of the
                    // shipped file and do its two edge ops here, as LiteRT would.
                    let shipped = std::fs::read(&model_path).unwrap();
                    let core = if t.precision == "int8" {
                        effectc::export::tflite::core_of_shipped(&shipped).unwrap()
                    } else {
                        shipped
                    };
                    let model = tract_tflite::tflite()
                        .model_for_read(&mut &core[..])
                        .unwrap()
                        .into_optimized()
                        .unwrap()
                        .into_runnable()
                        .unwrap();
                    let fed = tensor(i, &in_shape, &in_data);
                    let dt = model.model().input_fact(0).unwrap().datum_type;
                    let fed = if dt.is_quantized() {
                        assert_eq!(i.dtype, "float32", "a float edge before the int8 core");
                        let (zp, scale) = dt.zp_scale();
                        let NpyData::F32(v) = &in_data else {
                            unreachable!()
                        };
                        let q: Vec<i8> = v
                            .iter()
                            .map(|x| ((x / scale).round() + zp as f32).clamp(-128.0, 127.0) as i8)
                            .collect();
                        let mut t = Tensor::from_shape(&in_shape, &q).unwrap();
                        unsafe { t.set_datum_type(dt) };
                        t
                    } else {
                        fed
                    };
                    let out = model.run(tvec!(fed.into_tvalue())).unwrap_or_else(|e| {
                        panic!("{name}: {} as the manifest says: {e:#}", g.input)
                    });
                    let out = out[0].clone().into_tensor();
                    assert_eq!(out.shape(), &o.shape[..], "{name} output shape");
                    // The int8 model's last tanh: tract rounds it onto another grid than
                    // LiteRT (whose numbers the golden frame holds) — a few steps of 1/128.
                    let tol = if t.precision == "int8" {
                        4.0 / 128.0
                    } else {
                        1e-4
                    };
                    (real(&out), tol)
                }
                "mlpackage" => {
                    // Core ML: the image's pixels through the model's own pixel maps.
                    let d = effectc::export::coreml::read_mlpackage(&model_path).unwrap();
                    let (im, om) = (d.input_pixel_map.unwrap(), d.output_pixel_map.unwrap());
                    assert_eq!(i.kind, "image");
                    let (h, w, c) = i.hwc().unwrap();
                    let pixels = in_data.to_f32();
                    let mut x = vec![0f32; h * w * c];
                    for y in 0..h {
                        for xx in 0..w {
                            for ch in 0..c {
                                x[(ch * h + y) * w + xx] =
                                    pixels[(y * w + xx) * c + ch] * im.scale + im.bias;
                            }
                        }
                    }
                    let values = effectc::ir::eval(&d.graph, &x).unwrap();
                    let net = &values.data[&d.graph.output_name];
                    let mut out = vec![0f32; h * w * c];
                    for y in 0..h {
                        for xx in 0..w {
                            for ch in 0..c {
                                let v = net[(ch * h + y) * w + xx] * om.scale + om.bias;
                                out[(y * w + xx) * c + ch] = v.round().clamp(0.0, 255.0);
                            }
                        }
                    }
                    // fp16 on the device, float32 here: a pixel level or two.
                    (out, 2.0)
                }
                other => panic!("unexpected format {other}"),
            };
            let err = max_abs(&got, &want);
            eprintln!("{name} {}: max abs {err} (tolerance {tolerance})", g.input);
            assert!(
                err <= tolerance,
                "{name}: {} fed as the manifest says gives an output {err} away from {}",
                g.input,
                g.output
            );
        }
    }
}
