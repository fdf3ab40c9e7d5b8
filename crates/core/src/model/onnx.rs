//! A minimal ONNX reader: just enough of the protobuf wire format to walk a graph's nodes and
//! read its float initializers. The U²-Net exports rembg distributes have batch-norm folded
//! into their convolutions, so convolutions (in graph order) are all their loader needs;
//! BiRefNet's exports are turned back into a state dict (`StateDict::from_onnx`) from the
//! graph's nodes and initializers.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{Error, Result};

/// One `Conv` node with its weights, in the order the graph runs it.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    /// `[out_channels, in_channels, kernel_h, kernel_w]`
    pub shape: [usize; 4],
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub stride: usize,
    pub dilation: usize,
    pub padding: usize,
}

/// One node of the graph: what it computes, from which values.
#[derive(Debug, Clone)]
pub struct Node {
    /// The exporter's name; `torch.onnx` writes the calling module's scope into it
    /// (`/decoder/decoder_block1/conv_in/Conv`).
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Integer attributes by name (`strides`, `pads`, `group`, …).
    pub ints: HashMap<String, Vec<i64>>,
}

/// A stored tensor, located in the file's bytes but not decoded.
#[derive(Debug, Clone)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<usize>,
    data_type: i64,
    data: InitializerData,
}

#[derive(Debug, Clone)]
enum InitializerData {
    /// `raw_data`: little-endian values at this range of the file.
    Raw(Range<usize>),
    /// `float_data`, already decoded (small tensors some exporters write this way).
    Floats(Vec<f32>),
}

impl Initializer {
    const FLOAT: i64 = 1;

    pub fn is_float(&self) -> bool {
        self.data_type == Self::FLOAT
    }

    /// The tensor's values; `file` is the whole file the graph was parsed from.
    pub fn floats(&self, file: &[u8]) -> Result<Vec<f32>> {
        if !self.is_float() {
            return Err(invalid(format!(
                "initializer '{}' is not float32",
                self.name
            )));
        }
        let data: Vec<f32> = match &self.data {
            InitializerData::Raw(range) => file
                .get(range.clone())
                .ok_or_else(|| invalid("truncated file"))?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            InitializerData::Floats(values) => values.clone(),
        };
        if data.len() != self.dims.iter().product::<usize>() {
            return Err(invalid(format!(
                "initializer '{}' has the wrong number of values",
                self.name
            )));
        }
        Ok(data)
    }
}

/// An ONNX model's graph: its nodes in execution order and its stored tensors by name.
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: HashMap<String, Initializer>,
}

impl Graph {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let model = Message::parse(bytes)?;
        let graph = model
            .messages(7)
            .next()
            .ok_or_else(|| invalid("the file has no graph (is it an ONNX model?)"))??;

        let mut initializers = HashMap::new();
        for tensor in graph.messages(5) {
            let tensor = tensor?;
            let name = tensor.string(8)?;
            let dims = tensor.ints(1)?.into_iter().map(|d| d as usize).collect();
            let data_type = tensor.int(2)?;
            let data = match tensor.bytes(9) {
                // An offset into `bytes`: the slice was cut from it.
                Some(raw) => {
                    let start = raw.as_ptr() as usize - bytes.as_ptr() as usize;
                    InitializerData::Raw(start..start + raw.len())
                }
                None => InitializerData::Floats(match data_type {
                    Initializer::FLOAT => tensor.floats(4)?,
                    _ => Vec::new(),
                }),
            };
            let initializer = Initializer {
                name: name.clone(),
                dims,
                data_type,
                data,
            };
            initializers.insert(name, initializer);
        }

        let mut nodes = Vec::new();
        for node in graph.messages(1) {
            let node = node?;
            let mut ints = HashMap::new();
            for attribute in node.messages(5) {
                let attribute = attribute?;
                let values = match attribute.ints(8)? {
                    list if list.is_empty() => vec![attribute.int(3)?],
                    list => list,
                };
                ints.insert(attribute.string(1)?, values);
            }
            nodes.push(Node {
                name: node.string(3)?,
                op: node.string(4)?,
                inputs: node.strings(1)?,
                outputs: node.strings(2)?,
                ints,
            });
        }
        Ok(Self {
            nodes,
            initializers,
        })
    }

    /// Every `Conv` node's weights, in graph (execution) order; `file` is the parsed bytes.
    pub fn convolutions(&self, file: &[u8]) -> Result<Vec<ConvWeights>> {
        let mut convs = Vec::new();
        for node in &self.nodes {
            match node.op.as_str() {
                "Conv" => convs.push(self.convolution(node, file)?),
                // Reading convolutions alone is only right when batch-norm was folded into
                // them, as torch.onnx does when exporting in eval mode.
                "BatchNormalization" => {
                    return Err(invalid(
                        "the graph has BatchNormalization nodes; cutout reads exports with \
                         batch-norm folded into the convolutions (torch.onnx.export in eval mode)",
                    ));
                }
                _ => {}
            }
        }
        Ok(convs)
    }

    fn convolution(&self, node: &Node, file: &[u8]) -> Result<ConvWeights> {
        let name = &node.name;
        let get = |index: usize| -> Result<&Initializer> {
            let input = node
                .inputs
                .get(index)
                .ok_or_else(|| invalid(format!("Conv node '{name}' lacks input {index}")))?;
            self.initializers.get(input).ok_or_else(|| {
                invalid(format!(
                    "Conv node '{name}': input '{input}' is not a stored weight"
                ))
            })
        };
        let weight = get(1)?;
        let shape: [usize; 4] = weight
            .dims
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("Conv weight '{}' is not 4-D", weight.name)))?;
        let bias = match node.inputs.len() {
            3 => get(2)?.floats(file)?,
            _ => vec![0.0; shape[0]],
        };
        if bias.len() != shape[0] {
            return Err(invalid(format!(
                "Conv '{name}': bias does not match weight"
            )));
        }
        let uniform = |what: &str| -> Result<usize> {
            match node.ints.get(what).map(Vec::as_slice) {
                None => Ok(if what == "pads" { 0 } else { 1 }),
                Some([first, rest @ ..]) if rest.iter().all(|v| v == first) && *first >= 0 => {
                    Ok(*first as usize)
                }
                Some(ints) => Err(invalid(format!(
                    "Conv '{name}': non-uniform {what} {ints:?}"
                ))),
            }
        };
        if node.ints.get("group").is_some_and(|g| g != &[1]) {
            return Err(invalid(format!("Conv '{name}': grouped convolution")));
        }
        Ok(ConvWeights {
            shape,
            weight: weight.floats(file)?,
            bias,
            stride: uniform("strides")?,
            dilation: uniform("dilations")?,
            padding: uniform("pads")?,
        })
    }
}

/// Reads every `Conv` node of the ONNX model in `bytes`, in graph (execution) order.
pub fn read_convolutions(bytes: &[u8]) -> Result<Vec<ConvWeights>> {
    Graph::parse(bytes)?.convolutions(bytes)
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidModel(message.into())
}

/// The fields of one protobuf message, undecoded: `(field number, value)`.
struct Message<'a> {
    fields: Vec<(u64, Value<'a>)>,
}

#[derive(Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Message<'a> {
    fn parse(mut bytes: &'a [u8]) -> Result<Self> {
        let mut fields = Vec::new();
        while !bytes.is_empty() {
            let key = read_varint(&mut bytes)?;
            let value = match key & 7 {
                0 => Value::Varint(read_varint(&mut bytes)?),
                1 => {
                    take(&mut bytes, 8)?;
                    Value::Fixed64
                }
                2 => {
                    let len = read_varint(&mut bytes)? as usize;
                    Value::Bytes(take(&mut bytes, len)?)
                }
                5 => {
                    let b = take(&mut bytes, 4)?;
                    Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                wire => return Err(invalid(format!("unsupported protobuf wire type {wire}"))),
            };
            fields.push((key >> 3, value));
        }
        Ok(Self { fields })
    }

    fn values(&self, field: u64) -> impl Iterator<Item = Value<'a>> + '_ {
        self.fields
            .iter()
            .filter(move |(f, _)| *f == field)
            .map(|(_, v)| *v)
    }

    fn bytes(&self, field: u64) -> Option<&'a [u8]> {
        self.values(field).find_map(|v| match v {
            Value::Bytes(b) => Some(b),
            _ => None,
        })
    }

    fn messages(&self, field: u64) -> impl Iterator<Item = Result<Message<'a>>> + '_ {
        self.values(field).filter_map(|v| match v {
            Value::Bytes(b) => Some(Message::parse(b)),
            _ => None,
        })
    }

    fn string(&self, field: u64) -> Result<String> {
        let bytes = self.bytes(field).unwrap_or_default();
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid("a name is not UTF-8"))
    }

    fn strings(&self, field: u64) -> Result<Vec<String>> {
        self.values(field)
            .map(|v| match v {
                Value::Bytes(b) => {
                    String::from_utf8(b.to_vec()).map_err(|_| invalid("a name is not UTF-8"))
                }
                _ => Err(invalid("expected a string")),
            })
            .collect()
    }

    fn int(&self, field: u64) -> Result<i64> {
        Ok(self.ints(field)?.first().copied().unwrap_or(0))
    }

    /// Repeated int64, packed or not.
    fn ints(&self, field: u64) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        for value in self.values(field) {
            match value {
                Value::Varint(v) => out.push(v as i64),
                Value::Bytes(mut packed) => {
                    while !packed.is_empty() {
                        out.push(read_varint(&mut packed)? as i64);
                    }
                }
                _ => return Err(invalid("expected an integer")),
            }
        }
        Ok(out)
    }

    /// Repeated float, packed or not.
    fn floats(&self, field: u64) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for value in self.values(field) {
            match value {
                Value::Fixed32(bits) => out.push(f32::from_bits(bits)),
                Value::Bytes(packed) => out.extend(
                    packed
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                _ => return Err(invalid("expected a float")),
            }
        }
        Ok(out)
    }
}

fn read_varint(bytes: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| invalid("truncated file"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(invalid("malformed varint"))
}

fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8]> {
    if bytes.len() < len {
        return Err(invalid("truncated file"));
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error() {
        let err = read_convolutions(b"\x0a\xff\xff").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = read_convolutions(b"").unwrap_err().to_string();
        assert!(err.contains("no graph"), "{err}");
    }

    /// A protobuf length-delimited field: key (field number, wire type 2), length, bytes.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        [vec![number << 3 | 2, bytes.len() as u8], bytes.to_vec()].concat()
    }

    #[test]
    fn unfolded_batch_norm_is_refused() {
        let node = field(4, b"BatchNormalization"); // NodeProto.op_type
        let graph = field(1, &node); // GraphProto.node
        let model = field(7, &graph); // ModelProto.graph
        let err = read_convolutions(&model).unwrap_err().to_string();
        assert!(err.contains("BatchNormalization"), "{err}");
    }
}
