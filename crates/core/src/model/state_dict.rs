//! A PyTorch state dict (`model.safetensors`, or a `.pth` checkpoint) read through burn's own
//! readers (`burn-store`), handed out tensor by tensor by name with its shape checked.
//!
//! A model file builds its network by taking every tensor it uses; [`StateDict::finish`] then
//! refuses any tensor left over that the architecture does not name as unused at inference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::tensor::{DType, TensorData};
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{ModuleStore, PytorchStore, SafetensorsStore};

use crate::error::{Error, Result, TensorProblem};

/// Prefixes that training wrappers add to every key (`DataParallel`, `torch.compile`), which
/// upstream's own loader strips too (`check_state_dict` in BiRefNet's `utils.py`).
const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

pub struct StateDict {
    /// The file, for error messages.
    file: String,
    tensors: BTreeMap<String, PackTensor>,
    taken: BTreeSet<String>,
}

impl StateDict {
    /// Reads a `.safetensors` file, or a PyTorch checkpoint (`.pth`, `.pt`, `.bin`).
    pub fn open(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let tensors = if is_safetensors {
            let mut store = SafetensorsStore::from_file(path);
            store.get_all_tensors().cloned().map_err(|e| {
                Error::InvalidModel(format!("{file}: not a readable safetensors file: {e}"))
            })?
        } else {
            // Keys exactly as saved: no renumbering of `nn.Sequential` indices.
            let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
            store.get_all_tensors().cloned().map_err(|e| {
                Error::InvalidModel(format!("{file}: not a readable PyTorch checkpoint: {e}"))
            })?
        };
        Ok(Self::new(file, tensors))
    }

    /// A safetensors file already in memory.
    pub fn from_safetensors_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        let mut store = SafetensorsStore::from_bytes(Some(bytes));
        let tensors = store.get_all_tensors().cloned().map_err(|e| {
            Error::InvalidModel(format!("{name}: not a readable safetensors file: {e}"))
        })?;
        Ok(Self::new(name.to_string(), tensors))
    }

    fn new(file: String, tensors: BTreeMap<String, PackTensor>) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(name, tensor)| {
                let mut key = name.as_str();
                while let Some(rest) = WRAPPER_PREFIXES.iter().find_map(|p| key.strip_prefix(p)) {
                    key = rest;
                }
                (key.to_string(), tensor)
            })
            .collect();
        Self {
            file,
            tensors,
            taken: BTreeSet::new(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of tensor `name`, without taking it (to read a width from it).
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|t| t.shape.to_vec())
            .ok_or_else(|| self.problem(name, TensorProblem::Missing))
    }

    /// Tensor `name` as f32 (converted from f16/bf16), which must have exactly `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let data = self.data_shaped(name, shape)?;
        if !matches!(
            data.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(self.problem(name, TensorProblem::DType(format!("{:?}", data.dtype()))));
        }
        self.taken.insert(name.to_string());
        data.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| self.problem(name, TensorProblem::Unreadable(format!("{e:?}"))))
    }

    /// An integer tensor (an index buffer), which must have exactly `shape`.
    pub fn take_indices(&mut self, name: &str, shape: &[usize]) -> Result<Vec<i64>> {
        let data = self.data_shaped(name, shape)?;
        if !matches!(data.dtype(), DType::I64 | DType::I32) {
            return Err(self.problem(name, TensorProblem::DType(format!("{:?}", data.dtype()))));
        }
        self.taken.insert(name.to_string());
        data.convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| self.problem(name, TensorProblem::Unreadable(format!("{e:?}"))))
    }

    /// Tensor `name`'s data, which must have exactly `shape`.
    fn data_shaped(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        let found = self.shape(name)?;
        if found != shape {
            return Err(self.problem(
                name,
                TensorProblem::Shape {
                    found,
                    expected: shape.to_vec(),
                },
            ));
        }
        self.data(name)
    }

    fn data(&self, name: &str) -> Result<TensorData> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| self.problem(name, TensorProblem::Missing))?;
        burn_store::bridge::to_data(tensor)
            .map_err(|e| self.problem(name, TensorProblem::Unreadable(e.to_string())))
    }

    /// Marks tensors the network does not use at inference (training heads, counters) as
    /// expected: `unused` says which by name.
    pub fn skip_unused(&mut self, unused: impl Fn(&str) -> bool) {
        let skipped: Vec<String> = self
            .tensors
            .keys()
            .filter(|name| unused(name))
            .cloned()
            .collect();
        self.taken.extend(skipped);
    }

    /// Every tensor must have been taken or skipped: an extra one means the file is another
    /// configuration of the architecture, or another model.
    pub fn finish(self) -> Result<()> {
        match self.tensors.keys().find(|name| !self.taken.contains(*name)) {
            Some(name) => Err(self.problem(name, TensorProblem::Unexpected)),
            None => Ok(()),
        }
    }

    pub fn problem(&self, tensor: &str, problem: TensorProblem) -> Error {
        Error::ModelTensor {
            file: self.file.clone(),
            tensor: tensor.to_string(),
            problem,
        }
    }
}
