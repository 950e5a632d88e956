//! Settings a user can type that no machine can honour: checked before anything large is
//! allocated or trained.
//!
//! The memory a configuration needs is estimated from the network's shapes (parameters with
//! their gradients and two Adam moments; activations, tangents, gradients and caches of a
//! training batch; the tangents of the extra random directions; the evaluation chunk), and
//! compared with what the machine has available: `MemAvailable` of `/proc/meminfo`, lowered
//! to a cgroup's limit, or `FDFA_MEMORY_LIMIT` (bytes, or with a K, M, G or T suffix) when
//! set. The estimate is deliberately generous (1.4 to 2 times the peak measured for FC-2, the
//! shallow CNN and FDFA with 16 directions on MNIST); it exists to refuse absurd values with
//! a message, not to budget tightly.

use fdfa::data::DatasetName;
use fdfa::model::Model;
use fdfa::rules::RuleKind;

use super::Args;

/// The environment variable that sets the memory a run may use.
pub const MEMORY_ENV: &str = "FDFA_MEMORY_LIMIT";
/// Assumed when the machine's memory cannot be read.
const FALLBACK: u64 = 64 << 30;
/// Threads per core beyond which more threads only cost.
const THREADS_PER_CORE: usize = 4;

/// The memory a run may use, and where that figure comes from.
pub fn memory_limit() -> (u64, String) {
    if let Some(v) = std::env::var_os(MEMORY_ENV) {
        let text = v.to_string_lossy().into_owned();
        if let Some(bytes) = parse_bytes(&text) {
            return (bytes, format!("{MEMORY_ENV}={text}"));
        }
        eprintln!("warning: ignoring {MEMORY_ENV}={text}: not a number of bytes");
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    });
    let cgroup = cgroup_room();
    match (meminfo, cgroup) {
        (Some(m), Some(c)) if c < m => (c, "the cgroup's memory limit".into()),
        (Some(m), _) => (m, "MemAvailable in /proc/meminfo".into()),
        (None, Some(c)) => (c, "the cgroup's memory limit".into()),
        (None, None) => (
            FALLBACK,
            format!("an assumed 64 GiB: the machine's memory is unknown; set {MEMORY_ENV}"),
        ),
    }
}

/// What a cgroup (v2, else v1) still lets this process allocate.
fn cgroup_room() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    let (max, current) = match read("/sys/fs/cgroup/memory.max") {
        Some(max) => (max, read("/sys/fs/cgroup/memory.current")?),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
        ),
    };
    // v1 reports "no limit" as a huge number.
    (max < 1 << 60).then(|| max.saturating_sub(current))
}

/// `123`, `4K`, `5M`, `6G`, `1.5T` as bytes.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, scale) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * scale as f64) as u64)
}

/// Bytes in words: `204.8 GB`.
pub fn human(bytes: u128) -> String {
    let units = ["bytes", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < units.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

/// The worker threads to use: `--threads`, capped at a few per core (with a warning), or
/// `None` for rayon's default of one per core.
pub fn threads(args: &Args) -> Option<usize> {
    let asked = args.threads?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = cores * THREADS_PER_CORE;
    match usize::try_from(asked) {
        Ok(t) if t <= cap => Some(t),
        _ => {
            eprintln!(
                "warning: --threads {asked} is more than {THREADS_PER_CORE} per core on this \
                 machine's {cores} core(s); using {cap}"
            );
            Some(cap)
        }
    }
}

/// One part of the estimate: what it is, its bytes, and the flag that sets its size.
struct Part {
    what: String,
    bytes: u128,
    flag: &'static str,
}

fn refuse(parts: &[Part], limit: (u64, String)) -> Result<(), (&'static str, String)> {
    let total: u128 = parts.iter().map(|p| p.bytes).sum();
    if total <= u128::from(limit.0) {
        return Ok(());
    }
    let Some(worst) = parts.iter().max_by_key(|p| p.bytes) else {
        return Ok(());
    };
    Err((
        worst.flag,
        format!(
            "the run would need about {} of memory ({}: {}), more than the {} available ({}); \
         lower {}",
            human(total),
            worst.what,
            human(worst.bytes),
            human(u128::from(limit.0)),
            limit.1,
            worst.flag
        ),
    ))
}

/// Checks a fully connected network of `n_layers` hidden layers of `width` before it is
/// built: its parameters, gradients and moments must fit.
pub fn check_fc(
    args: &Args,
    dataset: DatasetName,
    input: usize,
    width: usize,
) -> Result<(), (&'static str, String)> {
    let (inp, w, c) = (input as u128, width as u128, dataset.classes() as u128);
    let l = args.n_layers as u128;
    let params = if l == 0 {
        inp * c + c
    } else {
        inp * w + (l - 1) * w * w + w * c + 4 * l * w + c
    };
    // Value, gradient, two moments; feedback matrices are at most one more copy.
    let bytes = params.saturating_mul(4 * 5);
    let part = Part {
        what: format!(
            "{} hidden layers of {width} units: {params} parameters with their gradients and \
             Adam moments",
            args.n_layers
        ),
        bytes,
        flag: "--n-layers",
    };
    refuse(&[part], memory_limit())
}

/// Checks the whole configuration once the network is built, before the trainer is.
pub fn check(
    args: &Args,
    model: &mut Model,
    train_len: usize,
    test_len: usize,
) -> Result<(), (&'static str, String)> {
    let input: u128 = model.input_shape().iter().product::<usize>() as u128;
    let (mut acts, mut widest) = (0u128, input);
    let mut shape = vec![1];
    shape.extend_from_slice(model.input_shape());
    for layer in model.blocks().iter().flat_map(|b| b.layers()) {
        shape = layer
            .output_shape(&shape)
            .map_err(|e| ("--n-layers", e.to_string()))?;
        let size = shape.iter().product::<usize>() as u128;
        acts += size;
        widest = widest.max(size);
    }
    let params = model.param_count() as u128;
    let directions = match args.train_mode {
        RuleKind::Fdfa | RuleKind::Fga => u128::from(args.directions),
        _ => 1,
    };
    let bs = u128::from(args.batch_size);
    let rows = bs.min(train_len as u128);
    // Chunks of evaluation are whole multiples of the batch size (see `Trainer::evaluate`).
    let chunk = (u128::from(args.test_batch_size) / bs)
        .max(1)
        .saturating_mul(bs);
    let eval_rows = chunk.min(test_len as u128);
    let f = 4u128;
    let parts = [
        Part {
            what: format!("{params} parameters with their gradients and Adam moments"),
            bytes: params * f * 5,
            flag: "--n-layers",
        },
        Part {
            what: format!("training batches of {rows} samples of {acts} activations each"),
            bytes: rows.saturating_mul(input + 4 * acts).saturating_mul(f),
            flag: "--batch-size",
        },
        Part {
            what: format!(
                "{directions} random directions per sample, each with its tangents through \
                 the network"
            ),
            bytes: rows
                .saturating_mul(directions - 1)
                .saturating_mul(2 * acts)
                .saturating_mul(f),
            flag: "--directions",
        },
        Part {
            what: format!("evaluation chunks of {eval_rows} samples"),
            bytes: eval_rows
                .saturating_mul(input + 2 * widest)
                .saturating_mul(f),
            flag: "--test-batch-size",
        },
    ];
    refuse(&parts, memory_limit())
}
