//! What a person looks at after training: the loss curves (CSV and plot) and a sheet of
//! holdout samples.

use super::data::to_image;
use super::{plot, TrainError, Trainer};
use crate::nn::Accordion;
use std::collections::BTreeMap;
use std::path::PathBuf;

impl Trainer<'_> {
    pub(super) fn write_curves(
        &self,
        names: &[&str],
        history: &[Vec<f64>],
        title: &str,
        files: &mut BTreeMap<String, PathBuf>,
    ) -> Result<(), TrainError> {
        let csv_path = self.job.out_dir.join("loss.csv");
        let mut csv = format!("step,{}\n", names.join(","));
        for (i, row) in history.iter().enumerate() {
            csv.push_str(&format!(
                "{},{}\n",
                i + 1,
                row.iter()
                    .map(|v| format!("{v:.6}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        std::fs::write(&csv_path, csv).map_err(|source| TrainError::Io {
            path: csv_path.clone(),
            source,
        })?;
        files.insert("loss.csv".into(), csv_path);
        let series: Vec<(String, Vec<f64>)> = names
            .iter()
            .enumerate()
            .map(|(k, n)| (n.to_string(), history.iter().map(|r| r[k]).collect()))
            .collect();
        let png = self.job.out_dir.join("loss.png");
        crate::imaging::write_png(
            &plot::loss_plot(&format!("{title} losses"), &series, 640, 360),
            &png,
        )
        .map_err(|source| TrainError::Io {
            path: png.clone(),
            source,
        })?;
        files.insert("loss.png".into(), png);
        Ok(())
    }

    pub(super) fn write_samples(
        &self,
        net: &Accordion,
        teacher: Option<&Accordion>,
        files: &mut BTreeMap<String, PathBuf>,
    ) -> Result<(), TrainError> {
        let n = self.data.hold_src.size()[0].min(6);
        let src = self.data.hold_src.narrow(0, 0, n);
        let out = tch::no_grad(|| net.forward(&src));
        let t_out = teacher.map(|t| tch::no_grad(|| t.forward(&src)));
        let mut rows = Vec::new();
        for i in 0..n {
            let mut row = vec![to_image(&src.get(i)), to_image(&self.data.hold_tgt.get(i))];
            if let Some(t) = &t_out {
                row.push(to_image(&t.get(i)));
            }
            row.push(to_image(&out.get(i)));
            rows.push(row);
        }
        let titles: Vec<&str> = if teacher.is_some() {
            vec!["source", "target", "teacher", "student"]
        } else {
            vec!["source", "target", "output"]
        };
        let sheet = crate::imaging::contact_sheet::contact_sheet(&rows, &titles, 128);
        let path = self.job.out_dir.join("samples.png");
        crate::imaging::write_png(&sheet, &path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        files.insert("samples.png".into(), path);
        Ok(())
    }
}
