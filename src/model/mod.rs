//! Sequential networks made of blocks, and the primitives learning rules are built from.
//!
//! A [`Model`] is a chain of [`Block`]s. Every block but the last ends in a *feedback point*:
//! its output `h_l` is where feedback-alignment rules deliver their signal `g_l`. The last
//! block is the output layer producing the logits.
//!
//! The model gives rules building blocks, not policies, each with one contract:
//!
//! - a training forward with a hook at each feedback point ([`Model::forward_train`]), and its
//!   variant whose tangent is the JVP along a direction in parameter space
//!   ([`Model::forward_param_jvp`]);
//! - the feedback points' activations ([`Model::hidden`]) and the logits ([`Model::output`]);
//! - block-local backward: one block from the gradient of its output, optionally returning
//!   the gradient of its input ([`Model::backward_block`]), or every block at once, each
//!   from its own signal, in parallel ([`Model::backward_local`]);
//! - the full backward of backpropagation ([`Model::backward`]);
//! - the state of one block ([`Model::visit_block_state`], [`Model::visit_block_state_mut`])
//!   or of the whole model ([`Model::visit_state`], [`Model::visit_state_mut`]).
//!
//! Block `l < L` ends in feedback point `l`; block `L` is the output block.

mod sequential;
mod zoo;

pub use sequential::Sequential;
pub use zoo::{alexnet_bn, fc, shallow_cnn};

use std::ops::Range;

use crate::distributed::BatchGroup;
use crate::error::{Error, Result};
use crate::layers::{Layer, ParamMut, State, StateMut};
use crate::tensor::{Dual, Tensor};
use rayon::prelude::*;

/// Samples per chunk of [`Model::infer`]: bounds the memory of inference on large batches.
const INFER_CHUNK: usize = 256;

/// Which map of the network a [`Model::jvp`] differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The training map: BatchNorm normalises with the batch's statistics.
    Train,
    /// The inference map: BatchNorm normalises with its running statistics.
    Eval,
}

/// Where the first block of a [`Model::forward_blocks`] starts.
#[derive(Clone, Copy, Debug)]
pub enum BlockInput<'a> {
    /// The batch, for block 0.
    Batch(&'a Tensor),
    /// The previous block's output with its tangents, for any other block.
    Activation(&'a Dual),
}

/// A run of layers; hidden blocks end in a named feedback point.
#[derive(Debug)]
pub struct Block {
    layers: Vec<Box<dyn Layer>>,
    feedback: Option<String>,
}

impl Block {
    /// A hidden block whose output is the feedback point `feedback` (the reference's
    /// training-hook name, e.g. `fc_dfa.0`).
    pub fn hidden(feedback: impl Into<String>, layers: Vec<Box<dyn Layer>>) -> Self {
        Self {
            layers,
            feedback: Some(feedback.into()),
        }
    }

    /// The output block (no feedback point).
    pub fn output(layers: Vec<Box<dyn Layer>>) -> Self {
        Self {
            layers,
            feedback: None,
        }
    }

    /// The block's layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The name of the block's feedback point, `None` for the output block.
    pub fn feedback(&self) -> Option<&str> {
        self.feedback.as_deref()
    }
}

/// A feedback point as rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedbackPoint {
    /// The point's name, e.g. `fc_dfa.0`; feedback matrices are saved as `<name>.feedbacks`.
    pub name: String,
    /// The shape of one sample's activation at the point (e.g. `[800]` or `[15, 24, 24]`).
    pub shape: Vec<usize>,
}

impl FeedbackPoint {
    /// `D_l`, the number of features at the point.
    pub fn features(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A sequential network of blocks with reusable activation buffers.
///
/// ```
/// use fdfa::model::fc;
/// use fdfa::Tensor;
/// let mut rng = fdfa::init::rng(0);
/// let mut model = fc(&[1, 28, 28], 2, 800, 10, &mut rng)?;
/// assert_eq!(model.feedback_points().len(), 2);
/// let logits = model.infer(&Tensor::zeros(&[3, 1, 28, 28]))?;
/// assert_eq!(logits.shape(), &[3, 10]);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Debug)]
pub struct Model {
    blocks: Vec<Block>,
    input_shape: Vec<usize>,
    classes: usize,
    points: Vec<FeedbackPoint>,
    input: Dual,
    /// Output of every layer of every block, from the last training forward.
    acts: Vec<Vec<Dual>>,
    grad_a: Tensor,
    grad_b: Tensor,
    /// Per block, the two gradient buffers of [`Model::backward_local`].
    local: Vec<[Tensor; 2]>,
    eval_a: Tensor,
    eval_b: Tensor,
    logits: Tensor,
    /// Per block, the first layer with parameters: a block-local backward stops there.
    first_param: Vec<Option<usize>>,
    /// Per block and layer, the number of trainable parameters.
    param_counts: Vec<Vec<usize>>,
    /// The share of a batch split over ranks that the training passes see.
    group: Option<BatchGroup>,
    /// The first block of the last training forward (0 unless it ran a range of blocks);
    /// `None` when no backward may follow (no training forward yet, or a JVP since).
    trained_from: Option<usize>,
}

/// Names every unnamed layer by its position and checks that the names of the layers with
/// state and of the feedback points are unique (they become the `state_dict` paths).
fn name_layers(blocks: &mut [Block]) -> Result<()> {
    let mut layers = std::collections::HashMap::new();
    let mut points = std::collections::HashMap::new();
    for (b, block) in blocks.iter_mut().enumerate() {
        for (j, layer) in block.layers.iter_mut().enumerate() {
            if layer.name().is_empty() {
                layer.set_name(&format!("{b}.{j}"));
            }
            let name = layer.name().to_string();
            let mut stateful = false;
            layer.visit_state(&mut |_, _| stateful = true);
            // Only state is saved under the layer's name; a stateless layer's name is for
            // its errors alone.
            if name.is_empty() || !stateful {
                continue;
            }
            if let Some((b0, j0)) = layers.insert(name.clone(), (b, j)) {
                return Err(Error::config(
                    "model",
                    "names",
                    format!(
                        "layers {b0}.{j0} and {b}.{j} are both named `{name}`; parameter paths must be unique"
                    ),
                ));
            }
        }
        if let Some(point) = &block.feedback
            && let Some(b0) = points.insert(point.clone(), b)
        {
            return Err(Error::config(
                "model",
                "names",
                format!("the feedback points of blocks {b0} and {b} are both named `{point}`"),
            ));
        }
    }
    Ok(())
}

/// The number of trainable parameters of a layer.
fn param_count(layer: &dyn Layer) -> usize {
    let mut count = 0;
    layer.visit_state(&mut |_, s| count += usize::from(matches!(s, State::Param(_))));
    count
}

impl Model {
    /// Assembles blocks into a model taking samples of `input_shape` (without the batch
    /// axis), checking the whole chain once.
    ///
    /// Every layer without a name is named by its position, `<block>.<layer>` (its
    /// parameters are then `0.1.weight`, as in PyTorch's nested `nn.Sequential`); names the
    /// user gave are kept, and those of layers with state must be unique, as must the
    /// feedback points' names.
    ///
    /// ```
    /// use fdfa::layers::{LinearConfig, Relu};
    /// use fdfa::model::{Block, Model};
    /// let mut rng = fdfa::init::rng(0);
    /// let blocks = |second: &str, rng: &mut fdfa::init::Rng| -> fdfa::Result<Vec<Block>> {
    ///     Ok(vec![
    ///         Block::hidden("h", vec![
    ///             Box::new(LinearConfig::new(4, 8).init(rng)?),
    ///             Box::new(Relu::new("relu")),
    ///         ]),
    ///         Block::output(vec![Box::new(LinearConfig::new(8, 2).with_name(second).init(rng)?)]),
    ///     ])
    /// };
    /// let model = Model::new(&[4], blocks("out", &mut rng)?)?;
    /// let mut names = Vec::new();
    /// model.visit_state(&mut |name, _| names.push(name.to_string()));
    /// assert_eq!(names, ["0.0.weight", "0.0.bias", "out.weight", "out.bias"]);
    ///
    /// let err = Model::new(&[4], blocks("0.0", &mut rng)?).unwrap_err();
    /// assert!(err.to_string().contains("layers 0.0 and 1.0 are both named `0.0`"), "{err}");
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when a layer cannot take its predecessor's output;
    /// [`Error::InvalidConfig`] when there are no blocks, a hidden block lacks a feedback
    /// point, the last block has one, the output is not `[N, classes]`, or two layers with
    /// state (or two feedback points) have the same name.
    pub fn new(input_shape: &[usize], mut blocks: Vec<Block>) -> Result<Self> {
        name_layers(&mut blocks)?;
        let Some(last) = blocks.last() else {
            return Err(Error::config(
                "model",
                "blocks",
                "at least the output block is needed",
            ));
        };
        if last.feedback.is_some() {
            return Err(Error::config(
                "model",
                "blocks",
                "the last block is the output layer and has no feedback point",
            ));
        }
        let mut shape = vec![2];
        shape.extend_from_slice(input_shape);
        let mut points = Vec::new();
        for (b, block) in blocks.iter().enumerate() {
            if block.layers.is_empty() {
                return Err(Error::config(
                    "model",
                    "blocks",
                    format!("block {b} has no layer"),
                ));
            }
            if b + 1 < blocks.len() && block.feedback.is_none() {
                return Err(Error::config(
                    "model",
                    "blocks",
                    format!("hidden block {b} has no feedback point"),
                ));
            }
            for layer in &block.layers {
                shape = layer.output_shape(&shape)?;
            }
            if let Some(name) = &block.feedback {
                points.push(FeedbackPoint {
                    name: name.clone(),
                    shape: shape[1..].to_vec(),
                });
            }
        }
        if shape.len() != 2 {
            return Err(Error::config(
                "model",
                "blocks",
                format!("the output must be [N, classes], got {shape:?}"),
            ));
        }
        let acts = blocks
            .iter()
            .map(|b| vec![Dual::default(); b.layers.len()])
            .collect();
        let first_param = blocks
            .iter()
            .map(|b| b.layers.iter().position(|l| param_count(l.as_ref()) > 0))
            .collect();
        let param_counts = blocks
            .iter()
            .map(|b| b.layers.iter().map(|l| param_count(l.as_ref())).collect())
            .collect();
        Ok(Self {
            param_counts,
            local: vec![Default::default(); blocks.len()],
            first_param,
            classes: shape[1],
            blocks,
            input_shape: input_shape.to_vec(),
            points,
            input: Dual::default(),
            acts,
            grad_a: Tensor::default(),
            grad_b: Tensor::default(),
            eval_a: Tensor::default(),
            eval_b: Tensor::default(),
            logits: Tensor::default(),
            group: None,
            trained_from: None,
        })
    }

    /// Tells the training passes that they see one rank's share of a batch split over the
    /// group's ranks (`None`: the whole batch, the default). Every layer hears of it
    /// ([`Layer::set_batch_group`]: BatchNorm sums its statistics over the ranks), and so
    /// does a rule's draw of random directions (each rank draws its rows of the global
    /// batch's). The [`Trainer`](crate::train::Trainer) sets it around every step of a
    /// distributed run and clears it after.
    ///
    /// # Errors
    /// Whatever a layer cannot honour.
    pub fn set_batch_group(&mut self, group: Option<BatchGroup>) -> Result<()> {
        for block in &mut self.blocks {
            for layer in &mut block.layers {
                layer.set_batch_group(group.as_ref())?;
            }
        }
        self.group = group;
        Ok(())
    }

    /// The share of a split batch the training passes see, if any
    /// ([`set_batch_group`](Self::set_batch_group)).
    pub fn batch_group(&self) -> Option<&BatchGroup> {
        self.group.as_ref()
    }

    /// The shape of one input sample.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The number of classes (logits per sample).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The index of the first layer with trainable parameters in block `block`: a block-local
    /// backward runs from the block's output down to that layer and no further.
    ///
    /// # Panics
    /// When `block` is not below the number of blocks.
    pub fn first_trainable_layer(&self, block: usize) -> Option<usize> {
        self.first_param[block]
    }

    /// The feedback points, in forward order.
    pub fn feedback_points(&self) -> &[FeedbackPoint] {
        &self.points
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.shape().len() != self.input_shape.len() + 1
            || x.shape()[1..] != self.input_shape[..]
            || x.batch() == 0
        {
            let mut want = vec!["N".to_string()];
            want.extend(self.input_shape.iter().map(|d| d.to_string()));
            return Err(Error::shape(
                "model input",
                format!("[{}]", want.join(", ")),
                x.shape(),
            ));
        }
        Ok(())
    }

    /// Training forward of a batch `x` (`[N, input_shape...]`) with a zero input tangent.
    ///
    /// After each hidden block, `hook(l, h_l)` may modify the feedback point's activation
    /// and its tangents (FDFA adds its directions there). Returns the logits with their
    /// tangents.
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong input shape; whatever `hook` returns.
    pub fn forward_train(
        &mut self,
        x: &Tensor,
        hook: &mut dyn FnMut(usize, &mut Dual) -> Result<()>,
    ) -> Result<&Dual> {
        self.forward_impl(x, hook, None)
    }

    /// Training forward of a batch `x` whose tangent is the JVP along a direction `v` in
    /// parameter space: `v` holds one flat slice per trainable parameter, in the order of
    /// [`visit_state_mut`](Self::visit_state_mut) and in the order of each parameter's
    /// [`ParamMut::storage_mut`] (so an elementwise direction, such as a normal draw, needs
    /// no layout). The tangent reaching the logits is `d(logits) = J_theta v`, one tangent
    /// per sample; each layer adds its term with [`Layer::add_param_jvp`].
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong input shape or a direction that does not hold one slice
    /// of the right length per parameter.
    pub fn forward_param_jvp(&mut self, x: &Tensor, v: &[&[f32]]) -> Result<&Dual> {
        let total: usize = self.param_counts.iter().flatten().sum();
        if v.len() != total {
            return Err(Error::shape(
                "parameter direction",
                format!("{total} slices, one per parameter"),
                &[v.len()],
            ));
        }
        self.forward_impl(x, &mut |_, _| Ok(()), Some(v))
    }

    fn forward_impl(
        &mut self,
        x: &Tensor,
        hook: &mut dyn FnMut(usize, &mut Dual) -> Result<()>,
        direction: Option<&[&[f32]]>,
    ) -> Result<&Dual> {
        self.check_input(x)?;
        self.input.assign_primal(x);
        self.run_forward(hook, direction)
    }

    /// The training forward from the input held in `self.input` (with its tangents).
    fn run_forward(
        &mut self,
        hook: &mut dyn FnMut(usize, &mut Dual) -> Result<()>,
        direction: Option<&[&[f32]]>,
    ) -> Result<&Dual> {
        self.run_blocks(0..self.blocks.len(), hook, direction)?;
        self.logits_dual()
    }

    /// The training forward of blocks `range`, from the input of its first block (held in
    /// `self.input` for block 0, else in the previous block's last activation).
    fn run_blocks(
        &mut self,
        range: Range<usize>,
        hook: &mut dyn FnMut(usize, &mut Dual) -> Result<()>,
        direction: Option<&[&[f32]]>,
    ) -> Result<()> {
        self.trained_from = Some(range.start);
        let before = &self.blocks[..range.start];
        let mut point = before.iter().filter(|b| b.feedback.is_some()).count();
        let mut offset: usize = self.param_counts[..range.start].iter().flatten().sum();
        for b in range {
            let (before, rest) = self.acts.split_at_mut(b);
            let block_acts = &mut rest[0];
            let mut prev: &Dual = match before.last() {
                Some(acts) => &acts[acts.len() - 1],
                None => &self.input,
            };
            let layers = &mut self.blocks[b].layers;
            let counts = &self.param_counts[b];
            // The hook runs on the caller's thread, so it need not be `Send`.
            crate::parallel::run(|| -> Result<()> {
                for ((layer, out), &count) in
                    layers.iter_mut().zip(block_acts.iter_mut()).zip(counts)
                {
                    layer.forward(prev, out)?;
                    if let Some(v) = direction {
                        layer.add_param_jvp(prev.primal(), &v[offset..offset + count], out)?;
                        offset += count;
                    }
                    prev = out;
                }
                Ok(())
            })?;
            if self.blocks[b].feedback.is_some() {
                if let Some(h) = block_acts.last_mut() {
                    hook(point, h)?;
                }
                point += 1;
            }
        }
        Ok(())
    }

    /// Training forward of the blocks `blocks` alone, for a model whose blocks are spread
    /// over processes (block-parallel training): the first block starts from `input`, the
    /// batch for block 0 or the previous block's output (with its tangents) as received from
    /// the process that owns it. `hook` runs at the feedback points of these blocks, with the
    /// points' global indices. Returns the last block's output: the logits when `blocks`
    /// ends with the output block.
    ///
    /// ```
    /// use fdfa::model::{BlockInput, fc};
    /// use fdfa::Tensor;
    /// // Three copies of one network, as three processes would build it from one seed.
    /// let build = || fc(&[1, 2, 2], 2, 5, 3, &mut fdfa::init::rng(0));
    /// let (mut whole, mut front, mut back) = (build()?, build()?, build()?);
    /// let x = Tensor::from_vec(&[2, 1, 2, 2], vec![0.1, -0.4, 0.3, 0.9, -0.2, 0.5, 0.7, -0.8])?;
    /// let logits = whole.forward_train(&x, &mut |_, _| Ok(()))?.primal().clone();
    /// // Blocks 0 and 1 on one side, the output block on the other.
    /// let h = front.forward_blocks(0..2, BlockInput::Batch(&x), &mut |_, _| Ok(()))?.clone();
    /// let split = back.forward_blocks(2..3, BlockInput::Activation(&h), &mut |_, _| Ok(()))?;
    /// assert_eq!(split.primal(), &logits);
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty or out-of-range `blocks`, or an input of the
    /// wrong kind for its first block; [`Error::Shape`] when the input does not fit.
    pub fn forward_blocks(
        &mut self,
        blocks: Range<usize>,
        input: BlockInput<'_>,
        hook: &mut dyn FnMut(usize, &mut Dual) -> Result<()>,
    ) -> Result<&Dual> {
        if blocks.is_empty() || blocks.end > self.blocks.len() {
            return Err(Error::config(
                "model",
                "blocks",
                format!(
                    "{blocks:?} is not a range of the {} blocks",
                    self.blocks.len()
                ),
            ));
        }
        match (blocks.start, input) {
            (0, BlockInput::Batch(x)) => {
                self.check_input(x)?;
                self.input.assign_primal(x);
            }
            (b, BlockInput::Activation(h)) if b > 0 => {
                let slot = self.acts[b - 1]
                    .last_mut()
                    .ok_or_else(|| Error::config("model", "blocks", "a block without layers"))?;
                slot.resize(h.primal().shape(), h.directions());
                let (primal, tangent) = slot.parts_mut();
                primal.data_mut().copy_from_slice(h.primal().data());
                if let (Some(t), Some(ht)) = (tangent, h.tangent()) {
                    t.data_mut().copy_from_slice(ht.data());
                }
            }
            (b, _) => {
                return Err(Error::config(
                    "model",
                    "blocks",
                    format!(
                        "block {b} starts from {}",
                        if b == 0 { "the batch" } else { "an activation" }
                    ),
                ));
            }
        }
        let last = blocks.end - 1;
        self.run_blocks(blocks, hook, None)?;
        self.acts[last]
            .last()
            .ok_or_else(|| Error::config("model", "blocks", "a block without layers"))
    }

    /// The output of the network on `x` and its directional derivative along the input
    /// direction `v`: the Jacobian-vector product `J(x) v`, computed exactly by the crate's
    /// forward-mode AD in the same pass as the output (no finite differences, no backward).
    ///
    /// `x` is `[N, ...]` (samples of the model's input shape, or of another layout with as
    /// many values, as [`logits`](Self::logits) takes them); `v` is either shaped like `x`
    /// (one direction, the tangent is `[N, classes]`) or `[k, N, ...]` (`k` directions at
    /// once, the tangent is `[k, N, classes]`). Returns `(logits, tangent)`.
    ///
    /// In [`Mode::Eval`] the network is the inference map (BatchNorm with its running
    /// statistics). In [`Mode::Train`] it is the training map, BatchNorm normalising with
    /// the batch's own statistics, whose dependence on every sample the tangent includes
    /// (so a sample's tangent depends on the other samples' directions); the running
    /// statistics are left as they were. Either way a backward after `jvp` is refused until
    /// the next training forward.
    ///
    /// A Jacobian column by column, checked against a central difference:
    ///
    /// ```
    /// use fdfa::model::{Mode, Sequential};
    /// use fdfa::Tensor;
    ///
    /// let mut rng = fdfa::init::rng(0);
    /// let mut model = Sequential::new(&[3]).linear(4).relu().linear(2).build(&mut rng)?;
    /// let x = Tensor::from_vec(&[1, 3], vec![0.3, -0.7, 0.2])?;
    /// for i in 0..3 {
    ///     let mut e = vec![0.0; 3];
    ///     e[i] = 1.0;
    ///     let (_, column) = model.jvp(&x, &Tensor::from_vec(&[1, 3], e.clone())?, Mode::Eval)?;
    ///     let h = 1e-3;
    ///     let shifted = |s: f32| -> fdfa::Result<Tensor> {
    ///         let moved = x.data().iter().zip(&e).map(|(a, b)| a + s * h * b).collect();
    ///         model.logits(&Tensor::from_vec(&[1, 3], moved)?)
    ///     };
    ///     let (up, down) = (shifted(1.0)?, shifted(-1.0)?);
    ///     for o in 0..2 {
    ///         let fd = (up.data()[o] - down.data()[o]) / (2.0 * h);
    ///         assert!((fd - column.data()[o]).abs() < 1e-2, "{fd} vs {}", column.data()[o]);
    ///     }
    /// }
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when `x` does not fit the model or `v` is shaped like neither `x` nor
    /// `[k, ...x]` with `k > 0`; in [`Mode::Train`], what a training forward refuses (such as
    /// BatchNorm over a single value per channel).
    pub fn jvp(&mut self, x: &Tensor, v: &Tensor, mode: Mode) -> Result<(Tensor, Tensor)> {
        let n = self.inference_batch(x)?;
        let k = if v.shape() == x.shape() {
            1
        } else if v.shape().len() == x.shape().len() + 1 && v.shape()[1..] == *x.shape() {
            v.shape()[0]
        } else {
            0
        };
        if k == 0 {
            let mut want = vec!["k".to_string()];
            want.extend(x.shape().iter().map(|d| d.to_string()));
            return Err(Error::shape(
                "jvp direction",
                format!("{:?} or [{}] with k > 0", x.shape(), want.join(", ")),
                v.shape(),
            ));
        }
        let mut shape = vec![n];
        shape.extend_from_slice(&self.input_shape);
        let primal = Tensor::from_vec(&shape, x.data().to_vec())?;
        shape[0] = k * n;
        let tangent = Tensor::from_vec(&shape, v.data().to_vec())?;
        let input = Dual::with_tangents(primal, tangent, k)?;
        let out = match mode {
            Mode::Train => {
                // The training forward updates the running statistics; a JVP must not.
                let mut saved = Vec::new();
                self.visit_state(&mut |_, s| match s {
                    State::Buffer(t) => saved.push((Some(t.clone()), 0)),
                    State::Counter(c) => saved.push((None, c)),
                    State::Param(_) => {}
                });
                self.input = input;
                let out = self.run_forward(&mut |_, _| Ok(()), None).cloned();
                let mut saved = saved.into_iter();
                self.visit_state_mut(&mut |_, s| match s {
                    StateMut::Param(_) => {}
                    StateMut::Buffer(mut b) => {
                        if let Some((Some(t), _)) = saved.next() {
                            let restored = b.set(&t);
                            debug_assert!(restored.is_ok(), "a buffer keeps its shape");
                        }
                    }
                    StateMut::Counter(c) => {
                        if let Some((None, count)) = saved.next() {
                            *c = count;
                        }
                    }
                });
                out
            }
            Mode::Eval => {
                let (mut cur, mut next) = (input, Dual::default());
                let layers = self.blocks.iter_mut().flat_map(|b| &mut b.layers);
                let done = crate::parallel::run(|| -> Result<()> {
                    for layer in layers {
                        layer.forward_eval(&cur, &mut next)?;
                        std::mem::swap(&mut cur, &mut next);
                    }
                    Ok(())
                });
                done.map(|()| cur)
            }
        };
        // The activations no longer belong to one training forward: refuse a backward.
        self.input = Dual::default();
        self.trained_from = None;
        let out = out?;
        let logits = out.primal().clone();
        let mut tangent = match out.tangent() {
            Some(t) => t.clone(),
            None => Tensor::zeros(&[k * n, self.classes]),
        };
        if v.shape() != x.shape() {
            tangent = Tensor::from_vec(&[k, n, self.classes], tangent.into_vec())?;
        }
        Ok((logits, tangent))
    }

    /// The logits (with their tangents) of the last training forward.
    ///
    /// # Errors
    /// Never for a model built by [`Model::new`]; kept fallible for the empty case.
    pub fn output(&self) -> Result<&Dual> {
        self.logits_dual()
    }

    fn logits_dual(&self) -> Result<&Dual> {
        self.acts
            .last()
            .and_then(|a| a.last())
            .ok_or_else(|| Error::config("model", "blocks", "no output"))
    }

    /// The activation `h_l` (with its tangents) at feedback point `l` after the last training
    /// forward.
    ///
    /// # Panics
    /// When `l` is not below the number of feedback points.
    pub fn hidden(&self, l: usize) -> &Dual {
        assert!(
            l < self.points.len(),
            "feedback point {l} out of range ({})",
            self.points.len()
        );
        // Every hidden block ends in a feedback point, so point `l` ends block `l`.
        &self.acts[l][self.acts[l].len() - 1]
    }

    /// Backward through block `block` alone (feedback point `block`'s, or the output block's
    /// when `block` is the last), from the gradient `grad` of its output: sets the gradients
    /// of its parameters and returns the gradient of its input when `input_grad` is set (a
    /// block-local backward passes `false` and skips that work). Chaining the returned
    /// gradient from the last block down is backpropagation; stopping on the way reads the
    /// true gradient at each feedback point.
    ///
    /// ```
    /// use fdfa::model::fc;
    /// use fdfa::Tensor;
    /// let mut rng = fdfa::init::rng(0);
    /// let mut model = fc(&[1, 2, 2], 2, 5, 3, &mut rng)?;
    /// let x = Tensor::from_vec(&[2, 1, 2, 2], vec![0.1, -0.4, 0.3, 0.9, -0.2, 0.5, 0.7, -0.8])?;
    /// model.forward_train(&x, &mut |_, _| Ok(()))?;
    /// let logits_grad = Tensor::from_vec(&[2, 3], vec![1., 0., 0., 0., 0., 0.])?;
    /// // The gradient of the logits with respect to h_1, the last feedback point.
    /// let g1 = model.backward_block(2, &logits_grad, true)?.cloned();
    /// assert_eq!(g1.map(|g| g.shape().to_vec()), Some(vec![2, 5]));
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when `grad` does not have the shape of the block's output;
    /// [`Error::BackwardBeforeForward`] before any training forward.
    ///
    /// # Panics
    /// When `block` is not below the number of blocks.
    pub fn backward_block(
        &mut self,
        block: usize,
        grad: &Tensor,
        input_grad: bool,
    ) -> Result<Option<&Tensor>> {
        self.grad_a.assign(grad);
        self.backward_from_a(block, input_grad)?;
        Ok(input_grad.then_some(&self.grad_a))
    }

    /// A backward needs the activations of a training forward ([`forward_train`](Self::forward_train);
    /// [`infer`](Self::infer) keeps none).
    fn check_forward_ran(&self, block: usize) -> Result<()> {
        match self.trained_from {
            Some(first) if first <= block => Ok(()),
            _ => Err(Error::BackwardBeforeForward),
        }
    }

    /// Backward through `block` from the gradient held in `grad_a`; leaves the input gradient
    /// in `grad_a`.
    fn backward_from_a(&mut self, block: usize, input_grad: bool) -> Result<()> {
        self.check_forward_ran(block)?;
        let Self {
            blocks,
            acts,
            input,
            grad_a,
            grad_b,
            first_param,
            ..
        } = self;
        let pass = BlockPass {
            block,
            input,
            acts,
            first_param: first_param[block],
        };
        crate::parallel::run(|| {
            pass.backward(&mut blocks[block].layers, input_grad, grad_a, grad_b)
        })
    }

    /// Block-local backward of every block at once: the output block's and every feedback
    /// point's, each from the gradient of its own output, which `grad(target, out)` writes
    /// into `out` (already shaped like the block's output; `target` is `Some(l)` for feedback
    /// point `l`, `None` for the output block). No block's input gradient is computed.
    ///
    /// This is the delivery of DFA, DKP and FDFA. Since no block waits for another's
    /// gradient (there is no backward locking), the blocks run in parallel, each on its own
    /// scratch; the results are those of calling [`backward_block`](Self::backward_block)
    /// on each block one after the other, to the bit.
    ///
    /// ```
    /// use fdfa::{Tensor, model::fc};
    /// let mut rng = fdfa::init::rng(0);
    /// let mut model = fc(&[1, 2, 2], 2, 5, 3, &mut rng)?;
    /// let x = Tensor::from_vec(&[2, 1, 2, 2], vec![0.1, -0.4, 0.3, 0.9, -0.2, 0.5, 0.7, -0.8])?;
    /// model.forward_train(&x, &mut |_, _| Ok(()))?;
    /// // Every block trained from a gradient of ones at its output.
    /// model.backward_local(&|_target, out| {
    ///     out.fill(1.0);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// Whatever `grad` returns (the first block's, in forward order, when several fail);
    /// [`Error::Shape`] when a layer finds a gradient of the wrong shape.
    pub fn backward_local(
        &mut self,
        grad: &(dyn Fn(Option<usize>, &mut Tensor) -> Result<()> + Sync),
    ) -> Result<()> {
        self.backward_local_blocks(0..self.blocks.len(), grad)
    }

    /// [`backward_local`](Self::backward_local) of the blocks `blocks` alone, after a
    /// [`forward_blocks`](Self::forward_blocks) of them (block-parallel training).
    ///
    /// # Errors
    /// As [`backward_local`](Self::backward_local); [`Error::InvalidConfig`] for a range
    /// outside the blocks.
    pub fn backward_local_blocks(
        &mut self,
        range: Range<usize>,
        grad: &(dyn Fn(Option<usize>, &mut Tensor) -> Result<()> + Sync),
    ) -> Result<()> {
        if range.end > self.blocks.len() {
            return Err(Error::config(
                "model",
                "blocks",
                format!(
                    "{range:?} is not a range of the {} blocks",
                    self.blocks.len()
                ),
            ));
        }
        self.check_forward_ran(range.start)?;
        let Self {
            blocks,
            acts,
            input,
            local,
            first_param,
            ..
        } = self;
        let (acts, input) = (&*acts, &*input);
        let last = blocks.len() - 1;
        let one_block = |block: usize, b: &mut Block, [grad_a, grad_b]: &mut [Tensor; 2]| {
            let pass = BlockPass {
                block,
                input,
                acts,
                first_param: first_param[block],
            };
            let out = acts[block][acts[block].len() - 1].primal();
            grad_a.resize(out.shape());
            // Every hidden block has a feedback point, so block `l` is point `l`.
            grad(if block == last { None } else { Some(block) }, grad_a)?;
            pass.backward(&mut b.layers, false, grad_a, grad_b)
        };
        if self.group.is_some() {
            // A split batch's layers talk to the other ranks in the same order on every
            // rank: one block after the other (each block's kernels stay parallel).
            return blocks
                .iter_mut()
                .zip(local.iter_mut())
                .enumerate()
                .filter(|(block, _)| range.contains(block))
                .try_for_each(|(block, (b, bufs))| one_block(block, b, bufs));
        }
        crate::parallel::run(|| {
            blocks
                .par_iter_mut()
                .zip(local.par_iter_mut())
                .enumerate()
                .filter(|(block, _)| range.contains(block))
                .map(|(block, (b, bufs))| one_block(block, b, bufs))
                // Ordered: the first failing block's error wins, whatever the scheduling.
                .reduce(|| Ok(()), |a, b| a.and(b))
        })
    }

    /// Backpropagation through the whole network from the logits' gradient.
    ///
    /// # Errors
    /// [`Error::Shape`] when `logits_grad` is not `[N, classes]` of the last forward.
    pub fn backward(&mut self, logits_grad: &Tensor) -> Result<()> {
        self.grad_a.assign(logits_grad);
        for b in (0..self.blocks.len()).rev() {
            self.backward_from_a(b, b > 0)?;
        }
        Ok(())
    }

    /// The batch size of an inference input: `x` is `[N, ...]` with samples that
    /// [`fits_input`](crate::data::fits_input) the model's input shape, the rule training
    /// applies (`[N, 784]` fits a `[1, 28, 28]` model; `[N, 1, 16, 49]` does not).
    fn inference_batch(&self, x: &Tensor) -> Result<usize> {
        match x.shape().split_first() {
            Some((&n, sample)) if n > 0 && crate::data::fits_input(sample, &self.input_shape) => {
                Ok(n)
            }
            _ => {
                let mut want = vec!["N".to_string()];
                want.extend(self.input_shape.iter().map(|d| d.to_string()));
                Err(Error::shape(
                    "model input",
                    format!(
                        "[{}] (or the same values per sample in another layout, such as flat)",
                        want.join(", ")
                    ),
                    x.shape(),
                ))
            }
        }
    }

    /// Inference of `n` samples of `x` into `logits`, in chunks of [`INFER_CHUNK`] through the
    /// two scratch tensors.
    fn infer_into(
        &self,
        x: &Tensor,
        n: usize,
        (eval_a, eval_b): (&mut Tensor, &mut Tensor),
        logits: &mut Tensor,
    ) -> Result<()> {
        logits.resize(&[n, self.classes]);
        let row = x.len() / n;
        let mut chunk_shape = vec![0];
        chunk_shape.extend_from_slice(&self.input_shape);
        let c = self.classes;
        crate::parallel::run(|| {
            for start in (0..n).step_by(INFER_CHUNK) {
                let m = INFER_CHUNK.min(n - start);
                chunk_shape[0] = m;
                eval_a.resize(&chunk_shape);
                eval_a
                    .data_mut()
                    .copy_from_slice(&x.data()[start * row..(start + m) * row]);
                for layer in self.blocks.iter().flat_map(|b| &b.layers) {
                    layer.infer(eval_a, eval_b)?;
                    std::mem::swap(eval_a, eval_b);
                }
                logits.data_mut()[start * c..(start + m) * c].copy_from_slice(eval_a.data());
            }
            Ok(())
        })
    }

    /// Inference (BatchNorm with running statistics) on a batch of any size, processed in
    /// chunks to bound memory, reusing the model's own buffers: the fast path of a training
    /// loop's evaluation. [`logits`](Self::logits) does the same from `&self`, for a model
    /// shared between threads.
    ///
    /// # Errors
    /// [`Error::Shape`] for an input whose samples do not fit the model's input shape.
    pub fn infer(&mut self, x: &Tensor) -> Result<&Tensor> {
        let n = self.inference_batch(x)?;
        let (mut a, mut b, mut logits) = (
            std::mem::take(&mut self.eval_a),
            std::mem::take(&mut self.eval_b),
            std::mem::take(&mut self.logits),
        );
        let done = self.infer_into(x, n, (&mut a, &mut b), &mut logits);
        (self.eval_a, self.eval_b, self.logits) = (a, b, logits);
        done?;
        Ok(&self.logits)
    }

    /// The logits `[N, classes]` of a batch `x` in inference mode (BatchNorm with its running
    /// statistics). Takes `&self`, so one trained model can serve several threads at once.
    ///
    /// `x` is `[N, ...]` with samples of the model's input shape, or of another layout with
    /// the same values (flat `[N, 784]` for a `[1, 28, 28]` model), as training accepts.
    /// Normalise new inputs as the training data was
    /// ([`Dataset::input_from_pixels`](crate::data::Dataset::input_from_pixels),
    /// [`Normalize::apply`](crate::data::Normalize::apply)).
    ///
    /// ```
    /// use fdfa::Tensor;
    /// let model = fdfa::model::fc(&[1, 2, 2], 1, 8, 3, &mut fdfa::init::rng(0))?;
    /// let x = Tensor::from_vec(&[2, 4], vec![0.1, -0.2, 0.3, 0.9, -0.5, 0.5, 0.7, -0.8])?;
    /// std::thread::scope(|s| {
    ///     let a = s.spawn(|| model.logits(&x));
    ///     let b = s.spawn(|| model.logits(&x));
    ///     assert_eq!(a.join().unwrap()?, b.join().unwrap()?);
    ///     Ok::<(), fdfa::Error>(())
    /// })?;
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] for an input whose samples do not fit the model's input shape.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.inference_batch(x)?;
        let (mut a, mut b, mut logits) = Default::default();
        self.infer_into(x, n, (&mut a, &mut b), &mut logits)?;
        Ok(logits)
    }

    /// Class probabilities `[N, classes]`: the softmax of [`logits`](Self::logits), each row
    /// summing to one.
    ///
    /// # Errors
    /// As [`logits`](Self::logits).
    pub fn predict_proba(&self, x: &Tensor) -> Result<Tensor> {
        let mut p = self.logits(x)?;
        for row in p.data_mut().chunks_mut(self.classes) {
            softmax_in_place(row);
        }
        Ok(p)
    }

    /// The predicted class of every sample of `x`: the index of its largest logit (the first
    /// one on ties; a NaN logit never wins).
    ///
    /// ```
    /// use fdfa::Tensor;
    /// let model = fdfa::model::fc(&[3], 1, 8, 4, &mut fdfa::init::rng(0))?;
    /// let x = Tensor::from_vec(&[2, 3], vec![0.1, -0.2, 0.3, 0.9, -0.5, 0.5])?;
    /// let classes = model.predict(&x)?;
    /// let p = model.predict_proba(&x)?;
    /// for (i, &c) in classes.iter().enumerate() {
    ///     let row = &p.data()[i * 4..(i + 1) * 4];
    ///     assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    ///     assert!(row.iter().all(|&q| q <= row[c]));
    /// }
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`logits`](Self::logits).
    pub fn predict(&self, x: &Tensor) -> Result<Vec<usize>> {
        let logits = self.logits(x)?;
        Ok(logits.data().chunks(self.classes).map(argmax).collect())
    }

    /// Visits every piece of state under its PyTorch `state_dict` name
    /// (`<layer>.<suffix>`), in a fixed order, in PyTorch's layout (see
    /// [`Layer::visit_state`] for why there are two flavours of this one visitor).
    ///
    /// ```
    /// use fdfa::layers::State;
    /// let model = fdfa::model::fc(&[1, 2, 2], 1, 5, 3, &mut fdfa::init::rng(0))?;
    /// let mut params = Vec::new();
    /// model.visit_state(&mut |name, state| {
    ///     if let State::Param(p) = state {
    ///         params.push((name.to_string(), p.shape()));
    ///     }
    /// });
    /// assert_eq!(params[0], ("fc_hidden.0.weight".to_string(), vec![5, 4]));
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    pub fn visit_state(&self, f: &mut dyn FnMut(&str, State<'_>)) {
        visit_layers(&self.blocks, f);
    }

    /// The exclusive flavour of [`visit_state`](Self::visit_state): the same entries, in the
    /// same order, as views that check every write.
    pub fn visit_state_mut(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>)) {
        visit_layers_mut(&mut self.blocks, f);
    }

    /// [`visit_state`](Self::visit_state) restricted to block `block` (the parameters
    /// a block-local backward of that block sets).
    ///
    /// # Panics
    /// When `block` is not below the number of blocks.
    pub fn visit_block_state(&self, block: usize, f: &mut dyn FnMut(&str, State<'_>)) {
        visit_layers(std::slice::from_ref(&self.blocks[block]), f);
    }

    /// [`visit_state_mut`](Self::visit_state_mut) restricted to block `block`.
    ///
    /// # Panics
    /// When `block` is not below the number of blocks.
    pub fn visit_block_state_mut(&mut self, block: usize, f: &mut dyn FnMut(&str, StateMut<'_>)) {
        visit_layers_mut(std::slice::from_mut(&mut self.blocks[block]), f);
    }

    /// The number of trainable scalars.
    pub fn param_count(&self) -> usize {
        let mut count = 0;
        self.visit_state(&mut |_, s| {
            if let State::Param(p) = s {
                count += p.len();
            }
        });
        count
    }

    /// Multiply-adds of one inference forward of one sample.
    pub fn flops_per_sample(&self) -> usize {
        self.block_flops_per_sample().iter().sum()
    }

    /// [`flops_per_sample`](Self::flops_per_sample) block by block (what a block-parallel
    /// placement balances).
    pub fn block_flops_per_sample(&self) -> Vec<usize> {
        let mut shape = vec![1];
        shape.extend_from_slice(&self.input_shape);
        let mut out = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let mut total = 0;
            for layer in &block.layers {
                total += layer.flops_per_sample(&shape);
                shape = layer.output_shape(&shape).unwrap_or_default();
            }
            out.push(total);
        }
        out
    }
}

/// Visits the state of every layer of `blocks` under `<layer>.<suffix>`, built in one buffer:
/// the optimizer visits every step, and this allocates nothing once the buffer has grown.
fn visit_layers(blocks: &[Block], f: &mut dyn FnMut(&str, State<'_>)) {
    let mut name = String::new();
    for layer in blocks.iter().flat_map(|b| &b.layers) {
        let base = prefix(&mut name, layer.name());
        layer.visit_state(&mut |suffix, state| {
            name.truncate(base);
            name.push_str(suffix);
            f(&name, state)
        });
    }
}

/// [`visit_layers`], exclusive.
fn visit_layers_mut(blocks: &mut [Block], f: &mut dyn FnMut(&str, StateMut<'_>)) {
    let mut name = String::new();
    for layer in blocks.iter_mut().flat_map(|b| &mut b.layers) {
        let base = prefix(&mut name, layer.name());
        layer.visit_state_mut(&mut |suffix, state| {
            name.truncate(base);
            name.push_str(suffix);
            f(&name, state)
        });
    }
}

/// Writes `<layer>.` into `buf` and returns its length.
fn prefix(buf: &mut String, layer: &str) -> usize {
    buf.clear();
    buf.push_str(layer);
    buf.push('.');
    buf.len()
}

/// What a backward through one block reads: the block's index, the model's input and every
/// activation of the last forward, and the block's first layer with parameters.
struct BlockPass<'a> {
    block: usize,
    input: &'a Dual,
    acts: &'a [Vec<Dual>],
    first_param: Option<usize>,
}

impl BlockPass<'_> {
    /// Backward through the block's `layers` from the gradient of its output in `grad_a`;
    /// leaves the block's input gradient there when `input_grad` is set.
    fn backward(
        &self,
        layers: &mut [Box<dyn Layer>],
        input_grad: bool,
        grad_a: &mut Tensor,
        grad_b: &mut Tensor,
    ) -> Result<()> {
        let (block, acts) = (self.block, self.acts);
        // Below the first layer with parameters, only the block's input gradient would need
        // the backward, so without it the pass ends there (a flatten or a pool in front of the
        // first linear layer costs no input-gradient product).
        let lowest = if input_grad {
            0
        } else {
            self.first_param.unwrap_or(layers.len())
        };
        for j in (lowest..layers.len()).rev() {
            let input = match j {
                0 if block == 0 => self.input.primal(),
                0 => acts[block - 1][acts[block - 1].len() - 1].primal(),
                _ => acts[block][j - 1].primal(),
            };
            let output = acts[block][j].primal();
            let want = j > lowest || input_grad;
            layers[j].backward(input, output, grad_a, want.then_some(&mut *grad_b))?;
            if want {
                std::mem::swap(grad_a, grad_b);
            }
        }
        Ok(())
    }
}

impl crate::optim::Parameters for Model {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        self.visit_state_mut(&mut |name, state| {
            if let StateMut::Param(p) = state {
                f(name, p);
            }
        });
    }
}

/// The index of the largest value, the first on ties; NaN never wins.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best
}

/// `row <- softmax(row)`, shifted by the row's maximum so that no exponential overflows.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}
