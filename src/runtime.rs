//! Where and in what precision to compute: `--device`, `--dtype`, `--threads`.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

/// A compute device as written on the command line: `cpu`, `cuda`, `cuda:N`, `metal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match s.split_once(':') {
            Some((k, n)) => {
                let n = n.parse::<usize>().map_err(|_| {
                    format!("device '{s}': '{n}' is not a device number (e.g. cuda:0)")
                })?;
                (k.to_string(), n)
            }
            None => (s.clone(), 0),
        };
        match kind.as_str() {
            "cpu" if ordinal == 0 => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(ordinal)),
            "metal" | "mps" => Ok(Self::Metal(ordinal)),
            _ => Err(format!(
                "unknown device '{s}'; valid: cpu, cuda, cuda:N, metal"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device, with an error that says how to get support when the binary lacks it.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    anyhow::bail!(
                        "--device {self}: this binary was built without CUDA support; rebuild with `cargo build --release --features cuda` (see README, section CUDA)"
                    );
                }
                Device::new_cuda(n).map_err(|e| anyhow::anyhow!("--device {self}: {e}"))
            }
            Self::Metal(n) => {
                if !candle_core::utils::metal_is_available() {
                    anyhow::bail!(
                        "--device {self}: this binary was built without Metal support; rebuild with `cargo build --release --features metal`"
                    );
                }
                Device::new_metal(n).map_err(|e| anyhow::anyhow!("--device {self}: {e}"))
            }
        }
    }
}

/// Compute precision.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// Sets the number of CPU threads candle and rayon use (`--threads`). Must run before any
/// parallel work.
///
/// candle's elementwise ops (bias and residual adds) run on a spinning barrier pool beside the
/// rayon pool its matmuls and our kernels use; on a few cores the two pools fight, and
/// measured runs are 7–15 % faster (and far steadier under load) with that pool reduced to
/// the calling thread, so it is, unless `CANDLE_NUM_THREADS` says otherwise.
pub fn set_threads(n: Option<usize>) -> anyhow::Result<()> {
    set_threads_from(n, "--threads", false)
}

/// [`set_threads`] for work dominated by candle's own elementwise ops (autograd through
/// composed layers), which keeps candle's elementwise pool.
pub fn set_threads_with(n: Option<usize>, elementwise_pool: bool) -> anyhow::Result<()> {
    set_threads_from(n, "--threads", elementwise_pool)
}

/// How many threads are worth having: [`THREADS_PER_CORE`] per available core. Asking for
/// more gains nothing, and a huge count would spend minutes spawning threads.
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores * THREADS_PER_CORE
}

/// Threads allowed per available core (see [`max_threads`]).
pub const THREADS_PER_CORE: usize = 4;

/// `RAYON_NUM_THREADS` when it is set and not empty: a count of at least 1, or an error
/// (rayon alone would silently use every core for a mistyped value).
fn threads_from_env() -> anyhow::Result<Option<usize>> {
    let Some(v) = std::env::var_os("RAYON_NUM_THREADS") else {
        return Ok(None);
    };
    let v = v.to_string_lossy();
    if v.trim().is_empty() {
        return Ok(None);
    }
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => anyhow::bail!(
            "RAYON_NUM_THREADS={v:?} is not a thread count (a whole number, at least 1)"
        ),
    }
}

/// [`set_threads_with`], with errors and warnings naming `origin`, where the count came from
/// (`--threads`, an environment variable, a config key). Without a count, `RAYON_NUM_THREADS`
/// is honoured within the same cap.
pub fn set_threads_from(
    n: Option<usize>,
    origin: &str,
    elementwise_pool: bool,
) -> anyhow::Result<()> {
    if !elementwise_pool && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let (n, origin) = match n {
        Some(n) => (n, origin),
        None => match threads_from_env()? {
            Some(n) => (n, "RAYON_NUM_THREADS"),
            None => return Ok(()),
        },
    };
    if n == 0 {
        anyhow::bail!("{origin} must be at least 1");
    }
    let cap = max_threads();
    let n = if n > cap {
        eprintln!(
            "warning: {origin} {n} is more than {THREADS_PER_CORE} per available core; using {cap}"
        );
        cap
    } else {
        n
    };
    // candle reads RAYON_NUM_THREADS for its own pool; rayon's global pool is set too.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .ok();
    Ok(())
}

/// Runs `f` on a thread of the pool that [`set_threads`] sized, so that the work's own thread
/// takes part in its parallel loops: from outside the pool each loop would wake the workers
/// and put the caller to sleep until they finish — a context switch per loop (45,000 in 256
/// decoded GPT-2 tokens; 1,400–1,600 this way, and decoding ~3 % faster on 2 cores).
/// Call it after [`set_threads`]: the first use of the pool fixes its size. (Not used for
/// grids: their many buffers then come from the worker's malloc arena, +10 % peak memory for
/// no measurable gain.)
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Tunes glibc's allocator for a forward pass that frees and reallocates the same large
/// activation buffers thousands of times: without it each one is a fresh `mmap` whose pages
/// are faulted in and zeroed again (a fifth of the run time of a small model's grid).
/// Buffers up to 32 MiB stay on the heap and freed memory is kept for reuse.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// The most memory this process has had resident so far (`getrusage`'s `ru_maxrss`), in
/// bytes; `None` where the platform does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            return Some(usage.ru_maxrss as u64 * 1024); // Linux reports KiB
        }
    }
    None
}

/// Physical memory of the machine in bytes, if the platform says.
pub fn physical_memory_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system constants.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return Some(pages as u64 * size as u64);
        }
    }
    None
}

/// Threads in use, for reports.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("metal".parse::<DeviceSpec>().unwrap(), DeviceSpec::Metal(0));
        assert!("tpu"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("valid: cpu"));
        assert!("cuda:x"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("not a device number"));
    }
}
