//! `load_trainer` on any checkpoint folder: the input's first two bytes (little-endian) are
//! the length of `state.json`, which follows; the rest is `model-000001.safetensors`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(2));
    let len = match head {
        [a, b] => usize::from(u16::from_le_bytes([*a, *b])).min(rest.len()),
        _ => 0,
    };
    let (state, tensors) = rest.split_at(len);
    fdfa_fuzz::scratch_file("state.json", state);
    fdfa_fuzz::scratch_file("model-000001.safetensors", tensors);
    let mut trainer = fdfa_fuzz::tiny_trainer();
    if fdfa::train::checkpoint::load_trainer(&fdfa_fuzz::scratch_dir(), &mut trainer).is_ok() {
        assert!(fdfa_fuzz::all_finite(trainer.model()));
    }
});
