//! The device a recipe's `run.device` names.

use candle_core::Device;

use crate::PipelineError;

/// Bytes of memory `device` has free for new allocations, where that can be
/// asked: the kernel's `MemAvailable` for the CPU on Linux; `None` elsewhere.
pub fn available_memory(device: &Device) -> Option<u64> {
    if !device.is_cpu() {
        return None;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The device a recipe asks for (`auto` takes a GPU when the build has one).
pub fn select_device(name: &str) -> Result<Device, PipelineError> {
    let unknown = || PipelineError::UnknownDevice(name.to_string());
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(unknown)?,
                None => return Err(unknown()),
            };
            Device::new_cuda(ordinal).map_err(|e| PipelineError::DeviceUnavailable {
                name: other.to_string(),
                reason: e.to_string(),
            })
        }
    }
}

/// What `auto` (or an explicit name) resolved to, in words for the log.
pub fn describe_device(requested: &str, device: &Device) -> String {
    let picked = match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    match (requested, device.is_cpu()) {
        ("auto", true) if candle_core::utils::cuda_is_available() => {
            "device auto: no CUDA device found, running on the cpu".to_string()
        }
        ("auto", true) => {
            "device auto: this build has no `cuda` feature, running on the cpu".to_string()
        }
        ("auto", false) => format!("device auto: picked {picked}"),
        _ => format!("device {picked}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_says_which_device_it_picked_and_why() {
        let device = select_device("auto").unwrap();
        let said = describe_device("auto", &device);
        if candle_core::utils::cuda_is_available() {
            assert!(said.starts_with("device auto: "), "{said}");
        } else {
            assert!(device.is_cpu());
            assert_eq!(
                said,
                "device auto: this build has no `cuda` feature, running on the cpu"
            );
            let refused = select_device("cuda:0").unwrap_err().to_string();
            assert!(refused.contains("`cuda` feature"), "{refused}");
        }
        assert_eq!(describe_device("cpu", &Device::Cpu), "device cpu");
        assert!(select_device("gpu").is_err());
    }
}
