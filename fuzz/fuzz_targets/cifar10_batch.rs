//! `fdfa::data::read_cifar10_batch` on any bytes: an error or a consistent result, never a panic
//! or an allocation beyond what the file can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fdfa_fuzz::scratch_file("cifar10_batch", data);
    let result = fdfa::data::read_cifar10_batch(&path);
    if let Ok(batch) = result {
        assert!(batch.labels().iter().all(|&l| l < 10));
    }
});
