//! A minimal ONNX reader: just enough of the protobuf wire format to walk a graph's nodes and
//! read its float initializers. The U²-Net exports rembg distributes have batch-norm folded
//! into their convolutions, so convolutions (in graph order) are all the model loader needs.

use std::collections::HashMap;

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

/// Reads every `Conv` node of the ONNX model in `bytes`, in graph (execution) order.
pub fn read_convolutions(bytes: &[u8]) -> Result<Vec<ConvWeights>> {
    let model = Message::parse(bytes)?;
    let graph = model
        .messages(7)
        .next()
        .ok_or_else(|| invalid("the file has no graph (is it an ONNX model?)"))??;

    let mut initializers = HashMap::new();
    for tensor in graph.messages(5) {
        let tensor = Tensor::parse(&tensor?)?;
        initializers.insert(tensor.name.clone(), tensor);
    }

    let mut convs = Vec::new();
    for node in graph.messages(1) {
        let node = node?;
        match node.string(4)?.as_str() {
            "Conv" => {}
            // Reading convolutions alone is only right when batch-norm was folded into them,
            // as torch.onnx does when exporting in eval mode.
            "BatchNormalization" => {
                return Err(invalid(
                    "the graph has BatchNormalization nodes; cutout reads exports with \
                     batch-norm folded into the convolutions (torch.onnx.export in eval mode)",
                ));
            }
            _ => continue,
        }
        let inputs = node.strings(1)?;
        let name = node.string(3)?;
        let get = |index: usize| -> Result<&Tensor> {
            let input = inputs
                .get(index)
                .ok_or_else(|| invalid(format!("Conv node '{name}' lacks input {index}")))?;
            initializers.get(input).ok_or_else(|| {
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
        let bias = match inputs.len() {
            3 => get(2)?.data.clone(),
            _ => vec![0.0; shape[0]],
        };
        if bias.len() != shape[0] {
            return Err(invalid(format!(
                "Conv '{name}': bias does not match weight"
            )));
        }

        let mut conv = ConvWeights {
            shape,
            weight: weight.data.clone(),
            bias,
            stride: 1,
            dilation: 1,
            padding: 0,
        };
        for attribute in node.messages(5) {
            let attribute = attribute?;
            let ints = attribute.ints(8)?;
            let uniform = |what: &str| -> Result<usize> {
                match ints.as_slice() {
                    [first, rest @ ..] if rest.iter().all(|v| v == first) && *first >= 0 => {
                        Ok(*first as usize)
                    }
                    _ => Err(invalid(format!(
                        "Conv '{name}': non-uniform {what} {ints:?}"
                    ))),
                }
            };
            match attribute.string(1)?.as_str() {
                "strides" => conv.stride = uniform("strides")?,
                "dilations" => conv.dilation = uniform("dilations")?,
                "pads" => conv.padding = uniform("pads")?,
                "group" if attribute.int(3)? != 1 => {
                    return Err(invalid(format!("Conv '{name}': grouped convolution")));
                }
                _ => {}
            }
        }
        convs.push(conv);
    }
    Ok(convs)
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidModel(message.into())
}

struct Tensor {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    const FLOAT: i64 = 1;

    fn parse(message: &Message) -> Result<Self> {
        let name = message.string(8)?;
        let dims = message
            .ints(1)?
            .into_iter()
            .map(|d| d as usize)
            .collect::<Vec<_>>();
        if message.int(2)? != Self::FLOAT {
            return Err(invalid(format!("initializer '{name}' is not float32")));
        }
        let data: Vec<f32> = match message.bytes(9) {
            Some(raw) => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            None => message.floats(4)?,
        };
        if data.len() != dims.iter().product::<usize>() {
            return Err(invalid(format!(
                "initializer '{name}' has the wrong number of values"
            )));
        }
        Ok(Self { name, dims, data })
    }
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
