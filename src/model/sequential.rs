//! A sequential builder, in the spirit of PyTorch's `nn.Sequential` and burn's configs.

use super::{Block, Model};
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::layers::{
    AdaptiveAvgPool2d, BatchNormConfig, Conv2dConfig, Flatten, Layer, LinearConfig, MaxPool2d, Relu,
};

/// One step of a [`Sequential`], turned into a layer once the shape reaching it is known.
#[derive(Debug)]
enum Step {
    Linear { d_out: usize, bias: bool },
    Conv2d { config: Conv2dConfig },
    BatchNorm,
    Relu,
    MaxPool2d { kernel: usize, stride: usize },
    AdaptiveAvgPool2d { out_h: usize, out_w: usize },
    Flatten,
    Custom(Box<dyn Layer>),
    Feedback,
}

/// Builds a [`Model`] layer by layer, inferring every layer's input size from the one before
/// it, and marking feedback points where the learning rule should deliver its signal.
///
/// Layers are named by their position, as `nn.Sequential` names them (`0`, `1`, ...), so
/// their parameters are `0.weight`, `0.bias`, ...; feedback points are `feedback.0`,
/// `feedback.1`, ... in forward order. Everything between two feedback points is one block.
///
/// An MLP 784-256-128-10 for FDFA, on MNIST images:
///
/// ```
/// use fdfa::model::Sequential;
///
/// let mut rng = fdfa::init::rng(0);
/// let model = Sequential::new(&[1, 28, 28])
///     .flatten()
///     .linear(256).relu().feedback()
///     .linear(128).relu().feedback()
///     .linear(10)
///     .build(&mut rng)?;
/// assert_eq!(model.classes(), 10);
/// assert_eq!(model.feedback_points()[1].name, "feedback.1");
/// assert_eq!(model.feedback_points()[1].shape, vec![128]);
/// # Ok::<(), fdfa::Error>(())
/// ```
///
/// A small CNN of one's own:
///
/// ```
/// use fdfa::model::Sequential;
///
/// let mut rng = fdfa::init::rng(0);
/// let model = Sequential::new(&[1, 28, 28])
///     .conv2d(8, 3).batch_norm().relu().max_pool(2, 2).feedback()
///     .conv2d(16, 3).batch_norm().relu().max_pool(2, 2).feedback()
///     .flatten().linear(10)
///     .build(&mut rng)?;
/// assert_eq!(model.feedback_points()[1].shape, vec![16, 5, 5]);
/// # Ok::<(), fdfa::Error>(())
/// ```
///
/// Nothing is checked until [`build`](Self::build), which reports the first step that does
/// not fit, by its position.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Sequential {
    input_shape: Vec<usize>,
    steps: Vec<Step>,
}

impl Sequential {
    /// A network taking samples of `input_shape` (without the batch axis), e.g. `[1, 28, 28]`
    /// or `[13]`.
    pub fn new(input_shape: &[usize]) -> Self {
        Self {
            input_shape: input_shape.to_vec(),
            steps: Vec::new(),
        }
    }

    fn push(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// A fully connected layer to `d_out` features, with bias, PyTorch's initialisation. Its
    /// input must be flat (`[N, d_in]`): put [`flatten`](Self::flatten) after images.
    pub fn linear(self, d_out: usize) -> Self {
        self.push(Step::Linear { d_out, bias: true })
    }

    /// [`linear`](Self::linear) without a bias.
    pub fn linear_no_bias(self, d_out: usize) -> Self {
        self.push(Step::Linear { d_out, bias: false })
    }

    /// A `kernel x kernel` convolution to `c_out` channels, stride 1, no padding, with bias.
    pub fn conv2d(self, c_out: usize, kernel: usize) -> Self {
        self.conv2d_with(c_out, kernel, |c| c)
    }

    /// A convolution whose stride, padding or bias `configure` sets on the
    /// [`Conv2dConfig`] (its input channels come from the shape before it).
    ///
    /// ```
    /// use fdfa::model::Sequential;
    /// let model = Sequential::new(&[3, 8, 8])
    ///     .conv2d_with(4, 3, |c| c.with_stride(2).with_padding(1))
    ///     .flatten()
    ///     .linear(2)
    ///     .build(&mut fdfa::init::rng(0))?;
    /// assert_eq!(model.flops_per_sample(), 4 * 4 * 4 * 3 * 9 + 64 * 2);
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    pub fn conv2d_with(
        self,
        c_out: usize,
        kernel: usize,
        configure: impl FnOnce(Conv2dConfig) -> Conv2dConfig,
    ) -> Self {
        // The input channels are filled in at build time.
        let config = configure(Conv2dConfig::new(0, c_out, kernel));
        self.push(Step::Conv2d { config })
    }

    /// BatchNorm over the features (`[N, F]`, BatchNorm1d) or the channels (`[N, C, H, W]`,
    /// BatchNorm2d) of the shape before it, with PyTorch's defaults.
    pub fn batch_norm(self) -> Self {
        self.push(Step::BatchNorm)
    }

    /// A ReLU.
    pub fn relu(self) -> Self {
        self.push(Step::Relu)
    }

    /// A `kernel x kernel` max pool with the given stride.
    pub fn max_pool(self, kernel: usize, stride: usize) -> Self {
        self.push(Step::MaxPool2d { kernel, stride })
    }

    /// An adaptive average pool to `out_h x out_w`.
    pub fn adaptive_avg_pool(self, out_h: usize, out_w: usize) -> Self {
        self.push(Step::AdaptiveAvgPool2d { out_h, out_w })
    }

    /// Flattens every sample to one axis.
    pub fn flatten(self) -> Self {
        self.push(Step::Flatten)
    }

    /// A layer of one's own (any [`Layer`]); its name must differ from the positional names.
    pub fn layer(self, layer: impl Layer + 'static) -> Self {
        self.push(Step::Custom(Box::new(layer)))
    }

    /// Ends the current block: its output is a feedback point, where DFA, DKP and FDFA
    /// deliver their signal.
    pub fn feedback(self) -> Self {
        self.push(Step::Feedback)
    }

    /// Builds the layers (drawing the weights from `rng`, in order) and the model.
    ///
    /// # Errors
    /// [`Error::Shape`] or [`Error::InvalidConfig`] naming the first layer (by position) that
    /// does not fit the shape before it, an empty block, a feedback point after the output,
    /// or an output that is not `[N, classes]`.
    pub fn build(self, rng: &mut Rng) -> Result<Model> {
        let mut shape = vec![1];
        shape.extend_from_slice(&self.input_shape);
        let (mut blocks, mut layers) = (Vec::new(), Vec::<Box<dyn Layer>>::new());
        let (mut index, mut point) = (0usize, 0usize);
        for step in self.steps {
            let name = index.to_string();
            let layer: Box<dyn Layer> = match step {
                Step::Feedback => {
                    if layers.is_empty() {
                        return Err(Error::config(
                            "Sequential",
                            "feedback",
                            format!(
                                "feedback point {point} closes a block without layers (two \
                                 feedback points in a row, or one before any layer)"
                            ),
                        ));
                    }
                    blocks.push(Block::hidden(
                        format!("feedback.{point}"),
                        std::mem::take(&mut layers),
                    ));
                    point += 1;
                    continue;
                }
                Step::Linear { d_out, bias } => {
                    let &[_, d_in] = shape.as_slice() else {
                        return Err(Error::shape(
                            &format!("{name} (linear; add `.flatten()` before it)"),
                            "[N, features]",
                            &shape,
                        ));
                    };
                    Box::new(
                        LinearConfig::new(d_in, d_out)
                            .with_bias(bias)
                            .with_name(name)
                            .init(rng)?,
                    )
                }
                Step::Conv2d { mut config } => {
                    let &[_, c_in, _, _] = shape.as_slice() else {
                        return Err(Error::shape(
                            &format!("{name} (conv2d)"),
                            "[N, C, H, W]",
                            &shape,
                        ));
                    };
                    config.c_in = c_in;
                    config.name = name;
                    Box::new(config.init(rng)?)
                }
                Step::BatchNorm => {
                    let config = match *shape.as_slice() {
                        [_, f] => BatchNormConfig::d1(f),
                        [_, c, _, _] => BatchNormConfig::d2(c),
                        _ => {
                            return Err(Error::shape(
                                &format!("{name} (batch_norm)"),
                                "[N, F] or [N, C, H, W]",
                                &shape,
                            ));
                        }
                    };
                    Box::new(config.with_name(name).init()?)
                }
                Step::Relu => Box::new(Relu::new(name)),
                Step::MaxPool2d { kernel, stride } => {
                    Box::new(MaxPool2d::new(name, kernel, stride)?)
                }
                Step::AdaptiveAvgPool2d { out_h, out_w } => {
                    Box::new(AdaptiveAvgPool2d::new(name, out_h, out_w)?)
                }
                Step::Flatten => Box::new(Flatten::new(name)),
                Step::Custom(layer) => layer,
            };
            shape = layer.output_shape(&shape)?;
            layers.push(layer);
            index += 1;
        }
        if layers.is_empty() {
            return Err(Error::config(
                "Sequential",
                "feedback",
                "the network must end in an output layer, not a feedback point",
            ));
        }
        blocks.push(Block::output(layers));
        Model::new(&self.input_shape, blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_positions_and_errors_name_the_step() {
        let mut rng = crate::init::rng(0);
        let model = Sequential::new(&[4])
            .linear(3)
            .relu()
            .feedback()
            .linear(2)
            .build(&mut rng)
            .unwrap();
        let mut names = Vec::new();
        model.visit_state(&mut |name, _| names.push(name.to_string()));
        assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);

        let err = Sequential::new(&[1, 2, 2])
            .linear(2)
            .build(&mut rng)
            .unwrap_err();
        assert!(err.to_string().contains("add `.flatten()`"), "{err}");
        let err = Sequential::new(&[4])
            .linear(3)
            .feedback()
            .feedback()
            .linear(2)
            .build(&mut rng)
            .unwrap_err();
        assert!(err.to_string().contains("feedback point 1"), "{err}");
        let err = Sequential::new(&[4])
            .linear(3)
            .feedback()
            .build(&mut rng)
            .unwrap_err();
        assert!(err.to_string().contains("output layer"), "{err}");
        let err = Sequential::new(&[4])
            .conv2d(2, 3)
            .build(&mut rng)
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }

    #[test]
    fn same_seed_same_weights_as_the_layers_built_by_hand() {
        let built = Sequential::new(&[5])
            .linear(3)
            .feedback()
            .linear(2)
            .build(&mut crate::init::rng(7))
            .unwrap();
        let mut rng = crate::init::rng(7);
        let first = LinearConfig::new(5, 3)
            .with_name("0")
            .init(&mut rng)
            .unwrap();
        let second = LinearConfig::new(3, 2)
            .with_name("1")
            .init(&mut rng)
            .unwrap();
        let by_hand = Model::new(
            &[5],
            vec![
                Block::hidden("feedback.0", vec![Box::new(first)]),
                Block::output(vec![Box::new(second)]),
            ],
        )
        .unwrap();
        let x =
            crate::Tensor::from_vec(&[2, 5], (0..10).map(|v| v as f32 * 0.1).collect()).unwrap();
        let (mut a, mut b) = (built, by_hand);
        assert_eq!(a.infer(&x).unwrap().data(), b.infer(&x).unwrap().data());
    }
}
