//! SHA-256 of the tensor file recorded in `state.json`, and of `state.json` itself: a
//! flipped bit anywhere is refused as damage, not resumed with other numbers (item 9).

use std::fs;
use std::path::Path;

use fdfa::train::checkpoint::{has_checksums, load_trainer, read_run_info};

use super::{TempDir, saved, trainer};

/// The message of loading `dir` into a fresh FC-1 trainer.
fn refused(dir: &Path) -> String {
    load_trainer(dir, &mut trainer(1)).unwrap_err().to_string()
}

/// `state.json` without its two checksums, as fdfa wrote it before it recorded them.
pub fn without_checksums(state: &str) -> String {
    let mut json: serde_json::Value = serde_json::from_str(state).unwrap();
    let map = json.as_object_mut().unwrap();
    assert!(map.remove("tensors_sha256").is_some());
    assert!(map.remove("state_sha256").is_some());
    serde_json::to_string_pretty(&json).unwrap()
}

#[test]
fn a_flipped_bit_in_the_weights_is_refused_as_damage() {
    let tmp = TempDir::new("flip-weights");
    let dir = tmp.path().join("ckpt");
    let tensors = saved(&dir, 1);
    assert!(has_checksums(&dir).unwrap());
    load_trainer(&dir, &mut trainer(1)).unwrap();
    let mut bytes = fs::read(&tensors).unwrap();
    // The lowest mantissa bit of the last value: still finite, still plausible.
    let last = bytes.len() - 4;
    bytes[last] ^= 1;
    fs::write(&tensors, &bytes).unwrap();
    let message = refused(&dir);
    let prefix = format!("checkpoint {}: damaged: its SHA-256 is ", tensors.display());
    assert!(message.starts_with(&prefix), "{message}");
    assert!(message.contains(", but state.json recorded "), "{message}");
    assert!(
        message.ends_with("; restore the checkpoint from a copy"),
        "{message}"
    );
}

#[test]
fn a_flipped_digit_in_state_json_is_refused_as_damage() {
    let tmp = TempDir::new("flip-state");
    let dir = tmp.path().join("ckpt");
    saved(&dir, 1);
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).unwrap();
    // A digit of the generator's state and one of the running loss.
    for key in ["\"word_pos\": ", "\"loss_sum\": "] {
        let at = text.find(key).unwrap() + key.len();
        let mut bytes = text.clone().into_bytes();
        let digit = bytes[at..].iter().position(u8::is_ascii_digit).unwrap() + at;
        bytes[digit] = if bytes[digit] == b'1' { b'2' } else { b'1' };
        fs::write(&path, &bytes).unwrap();
        let message = refused(&dir);
        let prefix = format!(
            "checkpoint {}: damaged or edited: its SHA-256 is ",
            path.display()
        );
        assert!(message.starts_with(&prefix), "{key}: {message}");
        assert!(
            message.ends_with("; restore the checkpoint from a copy"),
            "{message}"
        );
        assert!(
            read_run_info(&dir)
                .unwrap_err()
                .to_string()
                .starts_with(&prefix)
        );
    }
}

#[test]
fn a_checkpoint_without_checksums_loads_and_says_so() {
    let tmp = TempDir::new("legacy");
    let dir = tmp.path().join("ckpt");
    saved(&dir, 1);
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, without_checksums(&text)).unwrap();
    assert!(!has_checksums(&dir).unwrap());
    load_trainer(&dir, &mut trainer(1)).unwrap();

    // One checksum without the other is damage.
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_object_mut().unwrap().remove("state_sha256");
    fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    assert_eq!(
        refused(&dir),
        format!(
            "checkpoint {}: damaged or edited: it records only one of `tensors_sha256` and \
             `state_sha256`; restore the checkpoint from a copy",
            path.display()
        )
    );
}
