//! `load_model` on any bytes as a safetensors file: an error, or a model whose every tensor
//! is finite; never a panic or a read outside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fdfa_fuzz::scratch_file("model.safetensors", data);
    let mut model = fdfa_fuzz::tiny_model();
    if fdfa::train::checkpoint::load_model(&path, &mut model).is_ok() {
        assert!(fdfa_fuzz::all_finite(&model));
    }
});
