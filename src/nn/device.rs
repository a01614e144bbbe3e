//! Where tensor work runs: parsed by the CLI (which never loads libtorch), resolved to a
//! `tch::Device` inside the tensor worker.

/// Resolved inside the tensor worker process (`effectc-nn`): the CLI itself never
/// loads libtorch, whose start-up alone costs ~200 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA when present, else CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(text: &str) -> Result<DeviceSpec, String> {
        match text {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => Ok(DeviceSpec::Cuda(n)),
                None => Err(format!(
                    "unknown device `{other}`: use auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The libtorch device (CUDA for `auto` only when libtorch sees one).
    pub fn to_tch(self) -> tch::Device {
        match self {
            DeviceSpec::Auto => tch::Device::cuda_if_available(),
            DeviceSpec::Cpu => tch::Device::Cpu,
            DeviceSpec::Cuda(n) => tch::Device::Cuda(n),
        }
    }
}
