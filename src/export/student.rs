//! The trained student made ready for the writers (the `effectc-nn export` job): its
//! IR, the holdout frames with the tch student's outputs (the references every target
//! is verified against and the bundle's golden frames) and the calibration frames.

use crate::protocol::WorkerReport;
use crate::train::{load_generator, load_png, ExportJob, TrainError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Device, Tensor};

/// Lowers the student to the export IR and computes its reference outputs (CPU, fp32:
/// the references must not depend on the machine that happened to build them).
pub fn export_student(job: &ExportJob) -> Result<WorkerReport, TrainError> {
    let device = Device::Cpu;
    let (_vs, net) = load_generator(&job.weights, job.arch, device)?;
    let size = job.resolution_px as usize;
    let graph = net.to_ir([1, 3, size, size]);
    std::fs::create_dir_all(&job.out_dir).map_err(|source| TrainError::Io {
        path: job.out_dir.clone(),
        source,
    })?;
    let mut files = BTreeMap::new();
    let ir_path = job.out_dir.join("student.ir");
    let bytes = postcard::to_allocvec(&graph).map_err(|e| TrainError::Io {
        path: ir_path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&ir_path, bytes).map_err(|source| TrainError::Io {
        path: ir_path.clone(),
        source,
    })?;
    files.insert("student.ir".to_string(), ir_path);
    let stack = |paths: &[PathBuf]| -> Result<Tensor, TrainError> {
        let ts = paths
            .iter()
            .map(|p| load_png(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::stack(&ts, 0))
    };
    let write_npy =
        |name: &str, t: &Tensor, files: &mut BTreeMap<String, PathBuf>| -> Result<(), TrainError> {
            let path = job.out_dir.join(name);
            let shape: Vec<usize> = t.size().iter().map(|d| *d as usize).collect();
            let data = Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap_or_default();
            crate::bundle::npy::write_f32(&path, &shape, &data).map_err(|e| TrainError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            files.insert(name.to_string(), path);
            Ok(())
        };
    let holdout = stack(&job.holdout)?;
    let reference = tch::no_grad(|| net.forward(&holdout));
    write_npy("holdout-inputs.npy", &holdout, &mut files)?;
    write_npy("holdout-reference.npy", &reference, &mut files)?;
    if let Some((weights, arch)) = &job.teacher {
        let (_tvs, teacher) = load_generator(weights, *arch, device)?;
        let t_out = tch::no_grad(|| teacher.forward(&holdout));
        write_npy("holdout-teacher.npy", &t_out, &mut files)?;
    }
    write_npy(
        "calibration-inputs.npy",
        &stack(&job.calibration)?,
        &mut files,
    )?;
    let mut metrics = serde_json::Map::new();
    metrics.insert("macs".into(), serde_json::json!(graph.macs().unwrap_or(0)));
    metrics.insert("params".into(), serde_json::json!(graph.param_count()));
    Ok(WorkerReport { metrics, files })
}

#[cfg(test)]
mod tests {
    use crate::nn::{Accordion, AccordionConfig};
    use tch::{nn, Device, Kind, Tensor};

    #[test]
    fn ir_lowering_computes_what_the_net_computes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Accordion::new(
            &vs.root(),
            AccordionConfig {
                width: 4,
                blocks: 2,
            },
        );
        tch::manual_seed(1);
        // Non-zero biases so the lowering of biases is checked too.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.g_add_(&(Tensor::randn_like(&v) * 0.1));
            }
        });
        let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let expected = tch::no_grad(|| net.forward(&x));
        let graph = net.to_ir([1, 3, 32, 32]);
        let input = Vec::<f32>::try_from(&x.view([-1])).unwrap();
        let values = crate::ir::interp::eval(&graph, &input).unwrap();
        let out = values.get(&graph.output_name).unwrap();
        let exp = Vec::<f32>::try_from(&expected.view([-1])).unwrap();
        let max_diff = out
            .iter()
            .zip(&exp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "IR and tch differ by {max_diff}");
        let learned: u64 = graph
            .nodes
            .iter()
            .filter(|n| !n.name.ends_with(".blur"))
            .map(|n| match &n.op {
                crate::ir::Op::Conv2d { weight, bias, .. } => (weight.len() + bias.len()) as u64,
                _ => 0,
            })
            .sum();
        // Learned gains fold into their conv's weight and bias: no values of their own.
        assert_eq!(
            learned,
            vs.variables()
                .iter()
                .filter(|(name, _)| !name.ends_with(".gain"))
                .map(|(_, t)| t.numel() as u64)
                .sum::<u64>(),
            "every learned weight reaches the IR"
        );
    }
}
