//! `fdfa::data::read_idx_labels` on any bytes: an error or a consistent result, never a panic
//! or an allocation beyond what the file can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fdfa_fuzz::scratch_file("idx_labels", data);
    let result = fdfa::data::read_idx_labels(&path);
    let _ = result;
});
