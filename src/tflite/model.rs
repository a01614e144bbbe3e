//! The model's owned parts: one subgraph of tensors and operators over a list of
//! buffers, as the flatbuffer lays them out.

use super::{BuiltinOperator, Options, TensorType};

/// Quantization of a tensor: per-tensor (one scale) or per-channel along
/// `quantized_dimension`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub quantized_dimension: i32,
}

/// How a sparse constant's values are laid out (TFLite's `SparsityParameters`). Read
/// only: the MediaPipe rewrite densifies such constants before writing.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparsity {
    pub traversal_order: Vec<i32>,
    pub block_map: Vec<i32>,
    pub dims: Vec<SparseDim>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SparseDim {
    Dense(usize),
    Csr {
        segments: Vec<usize>,
        indices: Vec<usize>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub dtype: TensorType,
    /// Index into `Model::buffers`; 0 (the empty sentinel) for computed tensors.
    pub buffer: u32,
    pub quant: Option<Quant>,
    pub sparsity: Option<Sparsity>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub code: BuiltinOperator,
    pub version: i32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: Options,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub description: String,
    pub subgraph_name: Option<String>,
    pub tensors: Vec<Tensor>,
    /// Index 0 is the empty sentinel.
    pub buffers: Vec<Vec<u8>>,
    pub ops: Vec<Op>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
}

impl Model {
    /// A model without tensors or operators (only the sentinel buffer).
    pub fn new(description: String, subgraph_name: Option<String>) -> Model {
        Model {
            description,
            subgraph_name,
            tensors: Vec::new(),
            buffers: vec![Vec::new()],
            ops: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Appends a dense tensor (with its own buffer when `data` is given); returns its index.
    pub fn add_tensor(
        &mut self,
        name: String,
        shape: Vec<i32>,
        dtype: TensorType,
        data: Option<Vec<u8>>,
        quant: Option<Quant>,
    ) -> i32 {
        let buffer = match data {
            Some(d) => {
                self.buffers.push(d);
                (self.buffers.len() - 1) as u32
            }
            None => 0,
        };
        self.tensors.push(Tensor {
            name,
            shape,
            dtype,
            buffer,
            quant,
            sparsity: None,
        });
        (self.tensors.len() - 1) as i32
    }

    /// Tensor `t`'s constant contents; `None` for a computed tensor (or an empty buffer).
    pub fn data(&self, t: i32) -> Option<&[u8]> {
        let b = self.buffers.get(self.tensors[t as usize].buffer as usize)?;
        (!b.is_empty()).then_some(b.as_slice())
    }

    /// Gives tensor `t` new constant contents (in a buffer of its own).
    pub fn set_data(&mut self, t: i32, data: Vec<u8>) {
        self.buffers.push(data);
        self.tensors[t as usize].buffer = (self.buffers.len() - 1) as u32;
    }

    /// Keeps only the tensors the graph's inputs, outputs and operators name, renumbered
    /// in order, each constant in a buffer of its own in the same order.
    pub fn drop_unused_tensors(&mut self) {
        let mut used = vec![false; self.tensors.len()];
        let ops = self
            .ops
            .iter()
            .flat_map(|o| o.inputs.iter().chain(&o.outputs));
        for &i in self.inputs.iter().chain(&self.outputs).chain(ops) {
            // -1 names an omitted optional operand.
            if i >= 0 {
                used[i as usize] = true;
            }
        }
        let mut renumber = vec![-1i32; self.tensors.len()];
        let mut buffers = vec![Vec::new()];
        let mut tensors = Vec::new();
        for (i, mut t) in std::mem::take(&mut self.tensors).into_iter().enumerate() {
            if !used[i] {
                continue;
            }
            renumber[i] = tensors.len() as i32;
            // Cloned: two tensors may share a buffer (each gets its own, as before).
            let data = self.buffers[t.buffer as usize].clone();
            t.buffer = if data.is_empty() {
                0
            } else {
                buffers.push(data);
                buffers.len() as u32 - 1
            };
            tensors.push(t);
        }
        let map = |v: &mut Vec<i32>| {
            for i in v.iter_mut().filter(|i| **i >= 0) {
                *i = renumber[*i as usize];
            }
        };
        map(&mut self.inputs);
        map(&mut self.outputs);
        for op in &mut self.ops {
            map(&mut op.inputs);
            map(&mut op.outputs);
        }
        self.tensors = tensors;
        self.buffers = buffers;
    }
}
