//! The tensors of a checkpoint in the safetensors format: a writer that streams the tensors
//! straight from the model, and a reader that checks every tensor's presence, dtype, shape and
//! values before anything is handed over.
//!
//! The reader trusts nothing in the file. It refuses anything but a regular file (a FIFO
//! would block it), reads the header first (at most its announced length, which must fit
//! the file), has the `safetensors` crate check that the offsets are contiguous and match
//! each tensor's dtype and shape, requires the data to end exactly with the file, compares
//! every tensor it needs with what the model expects, and only then reads the data: exactly
//! the bytes of the tensors it needs, or with [`Header::read_all`] the whole file, hashed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};
use sha2::{Digest, Sha256};

use crate::data::regular::{NotRegular, open_regular};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::train::atomic::write_atomic;

/// Floats converted to bytes per write.
const CHUNK: usize = 1 << 14;

/// One tensor as the writer sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Item<'a> {
    /// An `f32` tensor: a parameter, a buffer, a feedback matrix, a moment.
    F32(&'a Tensor),
    /// A counter (`num_batches_tracked`), saved as PyTorch does: an `I64` scalar.
    Counter(u64),
}

/// Calls its argument once per tensor, in a fixed order.
pub(crate) type Visitor<'v> = dyn FnMut(&mut dyn FnMut(&str, Item<'_>)) + 'v;

/// Builds an [`Error::Checkpoint`].
pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes every tensor `visit` yields to `path` atomically (see [`write_atomic`]; `rename`
/// false leaves the temporary file, as a crash before the rename would).
///
/// `visit` runs twice: once to lay out the header, once to stream the data. Returns the
/// SHA-256 of the file written, in hexadecimal.
pub(crate) fn write(path: &Path, rename: bool, visit: &mut Visitor<'_>) -> Result<String> {
    let mut infos = Vec::new();
    let mut end = 0usize;
    visit(&mut |name, item| {
        let (dtype, shape, len) = match item {
            Item::F32(t) => (Dtype::F32, t.shape().to_vec(), t.len() * 4),
            Item::Counter(_) => (Dtype::I64, Vec::new(), 8),
        };
        let data_offsets = (end, end + len);
        end += len;
        let info = TensorInfo {
            dtype,
            shape,
            data_offsets,
        };
        infos.push((name.to_string(), info));
    });
    // The only metadata key, so the header (and the file) is the same for the same state.
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(format), infos)
        .map_err(|e| bad(path, format!("cannot lay out the tensors: {e}")))?;
    let mut header = serde_json::to_vec(&metadata)
        .map_err(|e| bad(path, format!("cannot write the header: {e}")))?;
    // Pad with spaces to 8 bytes, as the reference implementation does.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut hasher = Sha256::new();
    write_atomic(path, rename, |out| {
        let prefix = (header.len() as u64).to_le_bytes();
        hasher.update(prefix);
        hasher.update(&header);
        out.write_all(&prefix)?;
        out.write_all(&header)?;
        let mut result = Ok(());
        let mut written = 0usize;
        let mut bytes = Vec::with_capacity(CHUNK * 4);
        visit(&mut |_, item| {
            if result.is_err() {
                return;
            }
            result = match item {
                Item::F32(t) => t.data().chunks(CHUNK).try_for_each(|chunk| {
                    bytes.clear();
                    bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                    written += bytes.len();
                    hasher.update(&bytes);
                    out.write_all(&bytes)
                }),
                Item::Counter(c) => {
                    written += 8;
                    let bytes = i64::try_from(c).unwrap_or(i64::MAX).to_le_bytes();
                    hasher.update(bytes);
                    out.write_all(&bytes)
                }
            };
        });
        result?;
        if written != end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the tensors changed while being written ({end} bytes, then {written})"),
            ));
        }
        Ok(())
    })?;
    Ok(hex(&hasher.finalize()))
}

/// The largest header read (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Opens a file of a checkpoint, refusing anything but a regular file.
pub(crate) fn open_checkpoint_file(path: &Path) -> Result<(File, u64)> {
    open_regular(path).map_err(|e| match e {
        NotRegular::Io(e) => Error::io(path, e),
        NotRegular::Kind(kind) => bad(path, format!("is {kind}, not a regular file")),
    })
}

/// Reads a whole regular file, allocating no more than its length, refusing one longer than
/// `max`.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let (file, len) = open_checkpoint_file(path)?;
    if len > max {
        return Err(bad(
            path,
            format!("{len} bytes, more than the {max} such a file may hold"),
        ));
    }
    let capacity = usize::try_from(len).map_err(|_| bad(path, "too large for memory"))?;
    let mut bytes = Vec::with_capacity(capacity);
    file.take(len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 != len {
        return Err(bad(
            path,
            format!(
                "the file changed while being read ({len} bytes, then {})",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// A tensor a reader needs: its name, dtype and shape.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
}

/// The lowercase hexadecimal form of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A safetensors file whose header has been read and checked against the file's length; no
/// tensor data has been read yet.
#[derive(Debug)]
pub(crate) struct Header {
    path: PathBuf,
    file: File,
    /// The length prefix and the header's bytes, for the file's hash.
    head: Vec<u8>,
    metadata: Metadata,
}

impl Header {
    /// Opens `path` and reads and checks its header.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let (mut file, len) = open_checkpoint_file(path)?;
        let mut prefix = [0u8; 8];
        if len < 8 {
            return Err(bad(
                path,
                format!("truncated: {len} bytes, fewer than the 8 of the header's length"),
            ));
        }
        file.read_exact(&mut prefix)
            .map_err(|e| Error::io(path, e))?;
        let n = u64::from_le_bytes(prefix);
        if n > len - 8 {
            return Err(bad(
                path,
                format!(
                    "truncated: the header announces {n} bytes, but {} follow",
                    len - 8
                ),
            ));
        }
        if n > MAX_HEADER {
            return Err(bad(
                path,
                format!(
                    "not a valid safetensors file: a header of {n} bytes (at most {MAX_HEADER})"
                ),
            ));
        }
        let mut head = Vec::with_capacity(8 + n as usize);
        head.extend_from_slice(&prefix);
        (&mut file)
            .take(n)
            .read_to_end(&mut head)
            .map_err(|e| Error::io(path, e))?;
        if head.len() as u64 != 8 + n {
            return Err(bad(path, "the file changed while being read"));
        }
        let invalid = |what: String| bad(path, format!("not a valid safetensors file: {what}"));
        let text = std::str::from_utf8(&head[8..])
            .map_err(|e| invalid(format!("invalid UTF-8 in header: {e}")))?;
        let metadata: Metadata = serde_json::from_str(text)
            .map_err(|e| invalid(format!("invalid JSON in header: {e}")))?;
        let end = (8 + n).saturating_add(metadata.data_len() as u64);
        if end > len {
            return Err(bad(
                path,
                format!("truncated: the tensors' data does not end with the file ({len} bytes)"),
            ));
        }
        if end < len {
            return Err(bad(
                path,
                format!(
                    "too long: the tensors' data ends at byte {end}, but the file holds {len} \
                     bytes"
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            head,
            metadata,
        })
    }

    /// The header's entry for `w`, which must have its dtype and shape.
    fn info(&self, w: &Wanted) -> Result<&TensorInfo> {
        let name = &w.name;
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| bad(&self.path, format!("tensor `{name}` is missing")))?;
        check_entry(&self.path, name, info.dtype, &info.shape, w.dtype, &w.shape)?;
        Ok(info)
    }

    /// Reads exactly the tensors in `wanted`, each checked against the header first; the
    /// file's other tensors are neither read nor checked.
    pub(crate) fn read_some(mut self, wanted: &[Wanted]) -> Result<Tensors> {
        let mut spans = Vec::with_capacity(wanted.len());
        for w in wanted {
            spans.push(self.info(w)?.data_offsets);
        }
        let start = self.head.len() as u64;
        let mut tensors = HashMap::with_capacity(wanted.len());
        for (w, (s, e)) in wanted.iter().zip(spans) {
            let mut data = vec![0u8; e - s];
            self.file
                .seek(SeekFrom::Start(start + s as u64))
                .and_then(|_| self.file.read_exact(&mut data))
                .map_err(|e| Error::io(&self.path, e))?;
            tensors.insert(w.name.clone(), (w.dtype, w.shape.clone(), data));
        }
        Ok(Tensors {
            path: self.path,
            tensors,
            sha256: None,
        })
    }

    /// Reads every tensor of the file, which must hold exactly those in `wanted` (each
    /// checked against the header before any data is read), and hashes the whole file.
    pub(crate) fn read_all(self, wanted: &[Wanted]) -> Result<Tensors> {
        for w in wanted {
            self.info(w)?;
        }
        let names: HashSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
        let order = self.metadata.offset_keys();
        if let Some(extra) = order.iter().find(|n| !names.contains(n.as_str())) {
            return Err(bad(
                &self.path,
                format!(
                    "holds tensor `{extra}`, which is not part of this checkpoint's network, \
                     rule or optimizers"
                ),
            ));
        }
        let mut hasher = Sha256::new();
        hasher.update(&self.head);
        let mut reader = BufReader::new(self.file);
        let mut tensors = HashMap::with_capacity(order.len());
        for name in order {
            let Some(info) = self.metadata.info(&name) else {
                continue;
            };
            let (s, e) = info.data_offsets;
            let mut data = vec![0u8; e - s];
            reader
                .read_exact(&mut data)
                .map_err(|e| Error::io(&self.path, e))?;
            hasher.update(&data);
            tensors.insert(name, (info.dtype, info.shape.clone(), data));
        }
        Ok(Tensors {
            path: self.path,
            tensors,
            sha256: Some(hex(&hasher.finalize())),
        })
    }
}

/// Checks a header entry's dtype and shape.
fn check_entry(
    path: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    want_dtype: Dtype,
    want_shape: &[usize],
) -> Result<()> {
    if dtype != want_dtype {
        return Err(bad(
            path,
            format!("tensor `{name}` is {dtype:?}, expected {want_dtype:?}"),
        ));
    }
    if shape != want_shape {
        return Err(bad(
            path,
            format!("tensor `{name}` has shape {shape:?}, expected {want_shape:?}"),
        ));
    }
    Ok(())
}

/// Whether a tensor holds a variance or a second moment, which cannot be negative.
fn non_negative(name: &str) -> bool {
    name.ends_with(".running_var") || name.ends_with(".exp_avg_sq")
}

/// The tensors read from a file, each checked against the header.
pub(crate) struct Tensors {
    path: PathBuf,
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    sha256: Option<String>,
}

impl Tensors {
    /// The SHA-256 of the whole file, in hexadecimal, when it was read whole.
    pub(crate) fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }

    /// The file the tensors come from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn data(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let (d, s, data) = self
            .tensors
            .get(name)
            .ok_or_else(|| bad(&self.path, format!("tensor `{name}` is missing")))?;
        check_entry(&self.path, name, *d, s, dtype, shape)?;
        Ok(data)
    }

    /// The finite `f32` values of tensor `name`, which must have `shape`; those of a
    /// variance or a second moment must not be negative either.
    pub(crate) fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let data = self.data(name, Dtype::F32, shape)?;
        let positive = non_negative(name);
        let mut values = Vec::with_capacity(data.len() / 4);
        for (index, b) in data.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !v.is_finite() {
                return Err(bad(
                    &self.path,
                    format!("tensor `{name}` holds a non-finite value ({v}) at index {index}"),
                ));
            }
            if positive && v < 0.0 {
                return Err(bad(
                    &self.path,
                    format!(
                        "tensor `{name}` holds a negative value ({v}) at index {index}; a \
                         variance or a second moment cannot be negative"
                    ),
                ));
            }
            values.push(v);
        }
        Ok(values)
    }

    /// The `I64` scalar counter `name`, which must not be negative.
    pub(crate) fn counter(&self, name: &str) -> Result<u64> {
        let data = self.data(name, Dtype::I64, &[])?;
        let value = data
            .first_chunk::<8>()
            .map(|b| i64::from_le_bytes(*b))
            .ok_or_else(|| bad(&self.path, format!("tensor `{name}` holds no value")))?;
        u64::try_from(value).map_err(|_| {
            bad(
                &self.path,
                format!("tensor `{name}` holds {value}, expected a count of zero or more"),
            )
        })
    }

    /// The values of `name` as a tensor of `shape`.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(shape, self.f32(name, shape)?)
    }
}
