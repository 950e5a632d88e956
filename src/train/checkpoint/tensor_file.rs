//! The tensors of a checkpoint in the safetensors format: a writer that streams the tensors
//! straight from the model, and a reader that checks every tensor's presence, dtype, shape and
//! values before anything is handed over.
//!
//! The reader trusts nothing in the file: it reads at most the file's length, lets the
//! `safetensors` crate check that every offset lies inside the buffer and matches its
//! tensor's dtype and shape, and then compares each tensor with what the model expects.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

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
/// `visit` runs twice: once to lay out the header, once to stream the data.
pub(crate) fn write(path: &Path, rename: bool, visit: &mut Visitor<'_>) -> Result<()> {
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
    write_atomic(path, rename, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
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
                    out.write_all(&bytes)
                }),
                Item::Counter(c) => {
                    written += 8;
                    out.write_all(&i64::try_from(c).unwrap_or(i64::MAX).to_le_bytes())
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
    })
}

/// Reads a whole file, allocating no more than its length.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
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

/// A safetensors file read whole into memory.
#[derive(Debug)]
pub(crate) struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads `path` (at most its length).
    pub(crate) fn read(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            bytes: read_bounded(path, u64::MAX)?,
        })
    }

    /// Checks the header and every offset against the buffer.
    pub(crate) fn parse(&self) -> Result<Tensors<'_>> {
        let path = &self.path;
        let len = self.bytes.len();
        let Some(head) = self.bytes.first_chunk::<8>() else {
            return Err(bad(
                path,
                format!("truncated: {len} bytes, fewer than the 8 of the header's length"),
            ));
        };
        let header = u64::from_le_bytes(*head);
        if header > (len - 8) as u64 {
            return Err(bad(
                path,
                format!(
                    "truncated: the header announces {header} bytes, but {} follow",
                    len - 8
                ),
            ));
        }
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| match e {
            SafeTensorError::MetadataIncompleteBuffer => bad(
                path,
                format!("truncated: the tensors' data does not end with the file ({len} bytes)"),
            ),
            e => bad(path, format!("not a valid safetensors file: {e}")),
        })?;
        Ok(Tensors { path, st })
    }
}

/// The validated tensors of a [`TensorFile`].
pub(crate) struct Tensors<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
}

impl Tensors<'_> {
    fn view(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<TensorView<'_>> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| bad(self.path, format!("tensor `{name}` is missing")))?;
        if view.dtype() != dtype {
            return Err(bad(
                self.path,
                format!("tensor `{name}` is {:?}, expected {dtype:?}", view.dtype()),
            ));
        }
        if view.shape() != shape {
            return Err(bad(
                self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    view.shape()
                ),
            ));
        }
        Ok(view)
    }

    /// The finite `f32` values of tensor `name`, which must have `shape`.
    pub(crate) fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let view = self.view(name, Dtype::F32, shape)?;
        // The crate checked that the data holds exactly prod(shape) elements of 4 bytes.
        let mut values = Vec::with_capacity(view.data().len() / 4);
        for (index, b) in view.data().chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !v.is_finite() {
                return Err(bad(
                    self.path,
                    format!("tensor `{name}` holds a non-finite value ({v}) at index {index}"),
                ));
            }
            values.push(v);
        }
        Ok(values)
    }

    /// The `I64` scalar counter `name`, which must not be negative.
    pub(crate) fn counter(&self, name: &str) -> Result<u64> {
        let view = self.view(name, Dtype::I64, &[])?;
        let value = view
            .data()
            .first_chunk::<8>()
            .map(|b| i64::from_le_bytes(*b))
            .ok_or_else(|| bad(self.path, format!("tensor `{name}` holds no value")))?;
        u64::try_from(value).map_err(|_| {
            bad(
                self.path,
                format!("tensor `{name}` holds {value}, expected a count of zero or more"),
            )
        })
    }

    /// The values of `name` as a tensor of `shape`.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(shape, self.f32(name, shape)?)
    }
}
