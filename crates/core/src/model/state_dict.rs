//! A PyTorch state dict (`model.safetensors`, or a `.pth` checkpoint) read through burn's own
//! readers (`burn-store`), handed out tensor by tensor by name with its shape checked.
//!
//! A model file builds its network by taking every tensor it uses; [`StateDict::finish`] then
//! refuses any tensor left over that the architecture does not name as unused at inference.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use burn::tensor::{DType, TensorData};
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{ModuleStore, PytorchStore, SafetensorsStore};

use super::birefnet::relative_position_index;
use super::onnx::{Graph, Initializer};
use crate::error::{Error, Result, TensorProblem};

/// Prefixes that training wrappers add to every key (`DataParallel`, `torch.compile`), which
/// upstream's own loader strips too (`check_state_dict` in BiRefNet's `utils.py`).
const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

pub struct StateDict {
    /// The file, for error messages.
    file: String,
    tensors: BTreeMap<String, PackTensor>,
    taken: BTreeSet<String>,
    /// Batch norm was folded into the convolution before it (an ONNX export): such a
    /// convolution has a bias even where the model's own has none.
    batch_norm_folded: bool,
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

    /// The state dict of the model that `torch.onnx.export` wrote to `bytes` (rembg's BiRefNet
    /// files, as upstream's `tutorials/BiRefNet_pth2onnx.ipynb` makes them).
    ///
    /// The exporter keeps a parameter's name where the graph uses it as it is (LayerNorm,
    /// biases, most convolutions) and renames (`onnx::Conv_123`) what it rewrote while folding
    /// constants. Those are matched by structure, each from the node that consumes it, whose
    /// name is the calling module's scope (`/bb/layers.0/blocks.0/attn/qkv/MatMul`):
    /// - a `Conv` input: the convolution's weight and bias with batch norm folded in;
    /// - a `MatMul` input: a linear layer's weight, transposed (`x @ W.T`);
    /// - the data of a `Reshape` in a Swin `attn` scope, `[window⁴, heads]`: the relative
    ///   position bias table gathered by `relative_position_index`, which is inverted here.
    ///
    /// A module called twice (the backbone runs on two scales) has its later calls' scopes
    /// suffixed (`attn_1`); the unsuffixed, shortest scope names the parameter. Anything else
    /// the exporter renamed (shape constants, the shifted-window masks) is not a parameter and
    /// is left out. Tensors are decoded from `bytes` only when taken.
    pub fn from_onnx(file: &str, bytes: Vec<u8>) -> Result<Self> {
        let graph = Graph::parse(&bytes)?;
        let bytes = Arc::new(bytes);
        let problem = |tensor: &str, problem: TensorProblem| Error::ModelTensor {
            file: file.to_string(),
            tensor: tensor.to_string(),
            problem,
        };

        // Values that are another name for an initializer (`Identity` of a shared weight).
        let mut alias: HashMap<&str, &str> = HashMap::new();
        for node in graph.nodes.iter().filter(|n| n.op == "Identity") {
            if let (Some(input), Some(output)) = (node.inputs.first(), node.outputs.first())
                && graph.initializers.contains_key(input)
            {
                alias.insert(output, input);
            }
        }
        let stored = |value: &str| -> Option<&Initializer> {
            graph
                .initializers
                .get(alias.get(value).copied().unwrap_or(value))
        };

        // Each renamed initializer's role, from the consumer with the shortest scope.
        let mut roles: HashMap<String, (String, Role)> = HashMap::new();
        for node in &graph.nodes {
            let Some(module) = module_path(&node.name) else {
                continue;
            };
            let consumed: Vec<(usize, Role)> = match node.op.as_str() {
                "Conv" => vec![(1, Role::Conv("weight")), (2, Role::Conv("bias"))],
                "MatMul" => vec![(1, Role::LinearWeight)],
                "Reshape" if module.ends_with("attn") => vec![(0, Role::PositionBias)],
                _ => continue,
            };
            for (index, role) in consumed {
                let Some(tensor) = node.inputs.get(index).and_then(|v| stored(v)) else {
                    continue;
                };
                if !tensor.name.starts_with("onnx::") || !tensor.is_float() {
                    continue;
                }
                let better = match roles.get(&tensor.name) {
                    Some((known, _)) => module.len() < known.len(),
                    None => true,
                };
                if better {
                    roles.insert(tensor.name.clone(), (module.clone(), role));
                }
            }
        }

        let mut tensors = BTreeMap::new();
        for tensor in graph.initializers.values() {
            if !tensor.is_float() {
                continue;
            }
            let (name, dims, transform) = match roles.get(&tensor.name) {
                None if tensor.name.starts_with("onnx::") => continue,
                None => (tensor.name.clone(), tensor.dims.clone(), Transform::None),
                Some((module, Role::Conv(part))) => (
                    format!("{module}.{part}"),
                    tensor.dims.clone(),
                    Transform::None,
                ),
                Some((module, Role::LinearWeight)) => match tensor.dims[..] {
                    [rows, cols] => (
                        format!("{module}.weight"),
                        vec![cols, rows],
                        Transform::Transpose,
                    ),
                    _ => continue,
                },
                Some((module, Role::PositionBias)) => {
                    let name = format!("{module}.relative_position_bias_table");
                    let [pairs, heads] = tensor.dims[..] else {
                        continue;
                    };
                    let window = (1..=64).find(|w| w * w * w * w == pairs).ok_or_else(|| {
                        problem(
                            &name,
                            TensorProblem::Values(format!(
                                "{pairs} token pairs are not those of a square window"
                            )),
                        )
                    })?;
                    let rows = (2 * window - 1) * (2 * window - 1);
                    (name, vec![rows, heads], Transform::Ungather { window })
                }
            };
            if tensors.contains_key(&name) {
                return Err(problem(&name, TensorProblem::Values("stored twice".into())));
            }
            let source = tensor.clone();
            let bytes = bytes.clone();
            let file = file.to_string();
            let key = name.clone();
            let shape = burn::tensor::Shape::from(dims.clone());
            let packed = burn_store::bridge::deferred(name.clone(), DType::F32, shape, None, {
                move || {
                    let values = source.floats(&bytes).map_err(|e| {
                        burn_store::burn_pack::Error::ValidationError(e.to_string())
                    })?;
                    let values = transform.apply(values, &source.dims).map_err(|e| {
                        burn_store::burn_pack::Error::ValidationError(format!("{file}: {key}: {e}"))
                    })?;
                    Ok(TensorData::new(values, dims.clone()))
                }
            });
            tensors.insert(name, packed);
        }
        let mut state = Self::new(file.to_string(), tensors);
        state.batch_norm_folded = true;
        Ok(state)
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
            batch_norm_folded: false,
        }
    }

    /// Whether batch norm was folded into the convolutions before saving (see the field).
    pub fn batch_norm_folded(&self) -> bool {
        self.batch_norm_folded
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

/// What a renamed ONNX initializer is to the module whose node consumes it.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// A convolution's `weight` or `bias`, with batch norm folded in.
    Conv(&'static str),
    LinearWeight,
    PositionBias,
}

/// How an ONNX initializer's values become the state dict's tensor.
#[derive(Debug, Clone, Copy)]
enum Transform {
    None,
    /// `[in, out]` (as `MatMul` uses it) to PyTorch's `[out, in]`.
    Transpose,
    /// `table[index]` for the window's index back to the `[(2w-1)², heads]` table.
    Ungather {
        window: usize,
    },
}

impl Transform {
    fn apply(self, values: Vec<f32>, dims: &[usize]) -> std::result::Result<Vec<f32>, String> {
        match self {
            Transform::None => Ok(values),
            Transform::Transpose => {
                let [rows, cols] = dims[..] else {
                    return Err("not a matrix".into());
                };
                let mut out = vec![0.0; values.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        out[c * rows + r] = values[r * cols + c];
                    }
                }
                Ok(out)
            }
            Transform::Ungather { window } => {
                let heads = dims[1];
                let rows = (2 * window - 1) * (2 * window - 1);
                let mut table: Vec<Option<f32>> = vec![None; rows * heads];
                for (pair, row) in relative_position_index(window).into_iter().enumerate() {
                    for head in 0..heads {
                        let value = values[pair * heads + head];
                        let slot = &mut table[row * heads + head];
                        match *slot {
                            Some(seen) if seen.to_bits() != value.to_bits() => {
                                return Err(format!(
                                    "not a bias table gathered for {window}² windows"
                                ));
                            }
                            _ => *slot = Some(value),
                        }
                    }
                }
                table
                    .into_iter()
                    .map(|v| v.ok_or_else(|| "a bias table row is never used".to_string()))
                    .collect()
            }
        }
    }
}

/// The module path in a `torch.onnx` node name: `/decoder/gdt_convs_4/gdt_convs_4.0/Conv`
/// is `decoder.gdt_convs_4.0` (a `Sequential`'s child scope repeats its parent's name).
fn module_path(node: &str) -> Option<String> {
    let scopes: Vec<&str> = node.strip_prefix('/')?.split('/').collect();
    let (_, scopes) = scopes.split_last()?;
    let mut path: Vec<&str> = Vec::new();
    let mut parent = "";
    for &scope in scopes {
        match scope.strip_prefix(parent).and_then(|s| s.strip_prefix('.')) {
            Some(child) if !parent.is_empty() => path.push(child),
            _ => path.push(scope),
        }
        parent = scope;
    }
    (!path.is_empty()).then(|| path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_torch_onnx_scopes() {
        let path = |node| module_path(node).unwrap();
        assert_eq!(
            path("/bb/layers.0/blocks.1/attn/qkv/MatMul"),
            "bb.layers.0.blocks.1.attn.qkv"
        );
        assert_eq!(
            path("/decoder/gdt_convs_4/gdt_convs_4.0/Conv"),
            "decoder.gdt_convs_4.0"
        );
        assert_eq!(
            path("/squeeze_module/squeeze_module.0/dec_att/global_avg_pool/global_avg_pool.1/Conv"),
            "squeeze_module.0.dec_att.global_avg_pool.1"
        );
        assert_eq!(module_path("Conv_12"), None);
        assert_eq!(module_path("/Conv"), None);
    }

    #[test]
    fn a_gathered_bias_table_is_ungathered() {
        // Window 2: 3×3 = 9 table rows, 16 token pairs; two heads.
        let table: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let gathered: Vec<f32> = relative_position_index(2)
            .into_iter()
            .flat_map(|row| [table[row * 2], table[row * 2 + 1]])
            .collect();
        let ungather = Transform::Ungather { window: 2 };
        assert_eq!(ungather.apply(gathered.clone(), &[16, 2]).unwrap(), table);
        let mut inconsistent = gathered;
        inconsistent[0] += 1.0; // pair (0, 0) disagrees with the other pairs of its offset
        assert!(ungather.apply(inconsistent, &[16, 2]).is_err());
    }

    #[test]
    fn a_matmul_weight_is_transposed_back() {
        // x @ W.T with W [out 2, in 3] is stored as W.T [3, 2].
        let stored = vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let weight = Transform::Transpose.apply(stored, &[3, 2]).unwrap();
        assert_eq!(weight, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}
