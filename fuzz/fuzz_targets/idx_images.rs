//! `fdfa::data::read_idx_images` on any bytes: an error or a consistent result, never a panic
//! or an allocation beyond what the file can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fdfa_fuzz::scratch_file("idx_images", data);
    let result = fdfa::data::read_idx_images(&path);
    if let Ok((pixels, n, rows, cols)) = result {
        assert_eq!(pixels.len(), n * rows * cols);
    }
});
