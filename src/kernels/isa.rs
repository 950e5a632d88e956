//! The test binary runs itself under `qemu-x86_64 -cpu <model>` with `FDFA_ISA_CHILD` set:
//! the child prints its fingerprints and the parent compares them with its own.
//!
//! Fingerprints (FNV-1a over the bits) are taken per family: `gemm` (products with every
//! `alpha`/`beta` the crate uses, edge tiles and inner dimensions over one 256-deep pass; the
//! convolutions' packed product is checked against it bit for bit on each processor),
//! `normal` (the Box-Muller generator), `loss` (cross-entropy and its gradient) and `steps`
//! (two training steps with both optimizers, of FC-2 and the shallow CNN on 14x14 inputs,
//! under every rule:
//! BatchNorm's sums and maps, Adam, pooling and the convolution's bias sums besides the
//! products).
//!
//! matrixmultiply's kernels split in two classes: with FMA (AVX-512 and AVX2) and without
//! (AVX, SSE2). A fused multiply-add rounds once where a multiply then an add rounds twice,
//! so the classes give different bits and no choice of summation order can make them agree:
//! `gemm` and `steps` are compared within a class, `normal` and `loss` across all. Every
//! x86-64 processor since 2013 (Intel Haswell, AMD Piledriver and Zen) has FMA.
//!
//! Without `qemu-x86_64` the comparison is skipped with a message, or fails when
//! `FDFA_REQUIRE_QEMU=1` (as in CI).

use std::process::Command;

use crate::init;
use crate::optim::{AdamConfig, Parameters};
use crate::rules::{Learned, RuleKind};
use crate::tensor::Tensor;

use super::gemm::gemm;
use super::packed::{Operand, Packing, gemm_packed};

const CHILD_ENV: &str = "FDFA_ISA_CHILD";
const REQUIRE_ENV: &str = "FDFA_REQUIRE_QEMU";

/// FNV-1a over the bits of `values`, continuing `h`.
fn fnv(mut h: u64, values: &[f32]) -> u64 {
    for v in values {
        for byte in v.to_bits().to_le_bytes() {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn gemm_family() -> u64 {
    let mut rng = init::rng(3);
    let mut h = FNV_START;
    // Shapes like FC-2's products at batch 64, the FDFA feedback gradient (classes x hidden)
    // and the CNN's im2col product, smaller so that emulation stays quick, with edge tiles on
    // both sides, and an inner dimension over matrixmultiply's 256-deep pass.
    for (m, k, n) in [
        (64, 96, 80),
        (10, 64, 200),
        (10, 100, 33),
        (40, 75, 100),
        (37, 300, 41),
    ] {
        let a = init::uniform(&[m, k], 1.0, &mut rng);
        let b = init::uniform(&[k, n], 1.0, &mut rng);
        let c0 = init::uniform(&[m, n], 1.0, &mut rng);
        for (alpha, beta) in [
            (1.0, 0.0),
            (1.0, 1.0),
            (-1.0 / 64.0, 1.0),
            (-1.0 / 300.0, 1.0),
        ] {
            let mut c = c0.clone();
            gemm(alpha, a.matrix(), b.matrix(), beta, c.matrix_mut());
            h = fnv(h, c.data());
            if alpha == 1.0 {
                // The convolutions' own product must give sgemm's bits on this processor too.
                let mut packed = c0.clone();
                let ops = (Operand::View(a.matrix()), Operand::View(b.matrix()));
                gemm_packed(
                    ops.0,
                    ops.1,
                    beta,
                    packed.matrix_mut(),
                    &mut Packing::default(),
                );
                assert!(
                    packed
                        .data()
                        .iter()
                        .zip(c.data())
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}x{k}x{n}, beta {beta}: the packed product differs from sgemm"
                );
            }
        }
    }
    h
}

fn normal_family() -> u64 {
    let mut data = vec![0.0f32; 4099];
    init::fill_normal(&mut data, &mut init::rng(5));
    fnv(FNV_START, &data)
}

fn loss_family() -> u64 {
    let logits = init::uniform(&[67, 10], 8.0, &mut init::rng(6));
    let targets: Vec<usize> = (0..67).map(|i| (i * 7) % 10).collect();
    let mut grad = Tensor::default();
    let loss = crate::loss::cross_entropy(&logits, &targets, &mut grad).unwrap();
    fnv(fnv(FNV_START, &[loss]), grad.data())
}

fn steps_family() -> u64 {
    let mut h = FNV_START;
    for conv in [false, true] {
        for kind in [RuleKind::Bp, RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
            let mut rng = init::rng(11);
            let mut model = if conv {
                crate::model::shallow_cnn(&[1, 14, 14], 10, &mut rng).unwrap()
            } else {
                crate::model::fc(&[1, 14, 14], 2, 40, 10, &mut rng).unwrap()
            };
            let mut rule = kind.build(&model, 1, &mut rng).unwrap();
            let batch = 12;
            let mut x = Tensor::zeros(&[batch, 1, 14, 14]);
            init::fill_normal(x.data_mut(), &mut rng);
            let targets: Vec<usize> = (0..batch).map(|i| i % 10).collect();
            let mut fwd = AdamConfig::default().with_lr(1e-2).init().unwrap();
            let mut fb = AdamConfig::default().with_lr(1e-2).init().unwrap();
            for _ in 0..2 {
                rule.step(&mut model, &x, &targets, &mut rng).unwrap();
                fb.step(&mut Learned(rule.as_mut())).unwrap();
                fwd.step(&mut model as &mut dyn Parameters).unwrap();
            }
            (&mut model as &mut dyn Parameters).visit_params(&mut |_, p| {
                h = fnv(h, p.value().data());
            });
        }
    }
    h
}

/// `family=hex` pairs, in a fixed order.
fn fingerprints() -> Vec<(&'static str, u64)> {
    vec![
        ("gemm", gemm_family()),
        ("normal", normal_family()),
        ("loss", loss_family()),
        ("steps", steps_family()),
    ]
}

fn has_fma() -> bool {
    std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2")
}

/// The processors emulated, and whether each has FMA (and so matrixmultiply's FMA kernel).
const CPUS: [(&str, bool); 3] = [
    ("Nehalem", false),
    ("SandyBridge", false),
    ("Haswell", true),
];

fn qemu() -> Option<&'static str> {
    let found = Command::new("qemu-x86_64").arg("--version").output();
    found
        .is_ok_and(|o| o.status.success())
        .then_some("qemu-x86_64")
}

#[test]
fn kernels_give_the_same_bits_under_every_dispatched_instruction_set() {
    let mine = fingerprints();
    let line = mine
        .iter()
        .map(|(f, h)| format!("{f}={h:016x}"))
        .collect::<Vec<_>>()
        .join(" ");
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("FINGERPRINTS {line}");
        return;
    }
    let Some(qemu) = qemu() else {
        assert!(
            std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
            "{REQUIRE_ENV}=1 but qemu-x86_64 is not installed (apt-get install qemu-user)"
        );
        use std::io::Write;
        let _ = std::io::stderr()
            .write_all(b"SKIPPED the instruction-set comparison: qemu-x86_64 is not installed\n");
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let native_fma = has_fma();
    eprintln!("native (FMA: {native_fma}): {line}");
    let mut runs = Vec::new();
    for (cpu, fma) in CPUS {
        let out = Command::new(qemu)
            .args(["-cpu", cpu])
            .arg(&exe)
            .args([
                "--exact",
                "kernels::isa::kernels_give_the_same_bits_under_every_dispatched_instruction_set",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{cpu}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fields = stdout
            .lines()
            .find_map(|l| l.split_once("FINGERPRINTS ").map(|(_, f)| f.trim()))
            .unwrap_or_else(|| panic!("{cpu}: no fingerprints in {stdout}"));
        eprintln!("{cpu} (FMA: {fma}): {fields}");
        let theirs: Vec<(String, String)> = fields
            .split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        runs.push((cpu, fma, theirs));
    }
    for (family, hash) in &mine {
        let mine_hex = format!("{hash:016x}");
        let fma_bound = matches!(*family, "gemm" | "steps");
        for (cpu, fma, theirs) in &runs {
            let (_, theirs_hex) = theirs.iter().find(|(f, _)| f == family).unwrap();
            if !fma_bound || *fma == native_fma {
                assert_eq!(&mine_hex, theirs_hex, "{family}: native vs {cpu}");
            }
        }
        // Within the other class too: its processors agree among themselves.
        let other: Vec<&String> = runs
            .iter()
            .filter(|(_, fma, _)| *fma != native_fma)
            .map(|(_, _, t)| &t.iter().find(|(f, _)| f == family).unwrap().1)
            .collect();
        assert!(
            other.windows(2).all(|w| w[0] == w[1]),
            "{family}: the emulated processors of the other FMA class disagree: {other:?}"
        );
    }
}
