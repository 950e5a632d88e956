//! `--download`: fetching a dataset before training, with a progress bar per file.

#[cfg(feature = "download")]
use indicatif::{ProgressBar, ProgressStyle};

/// Downloads `dataset` into `dir` with a progress bar per file.
#[cfg(feature = "download")]
pub fn download(dataset: fdfa::data::DatasetName, dir: &std::path::Path) -> fdfa::Result<()> {
    let mut current: Option<(String, ProgressBar)> = None;
    fdfa::data::download(dataset, dir, &mut |p| {
        if current.as_ref().is_none_or(|(f, _)| f != p.file) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            let bar = ProgressBar::new(p.total.unwrap_or(0)).with_prefix(p.file.to_string());
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            current = Some((p.file.to_string(), bar));
        }
        if let Some((_, bar)) = &current {
            bar.set_position(p.done);
        }
    })?;
    if let Some((_, bar)) = current {
        bar.finish();
    }
    eprintln!("{dataset} is in {} (verified)", dir.display());
    Ok(())
}

/// Without the `download` feature, `--download` says how to get it.
#[cfg(not(feature = "download"))]
pub fn download(dataset: fdfa::data::DatasetName, _dir: &std::path::Path) -> fdfa::Result<()> {
    Err(fdfa::Error::InvalidConfig {
        layer: "--download".into(),
        field: "download",
        reason: format!(
            "this build cannot download {dataset}: run the example with \
             `cargo run --release --features download --example ...`"
        ),
    })
}
