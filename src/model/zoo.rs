//! The reference's networks, with its `state_dict` names.

use super::{Block, Model};
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::layers::{
    AdaptiveAvgPool2d, BatchNormConfig, Conv2dConfig, Flatten, Layer, LinearConfig, MaxPool2d, Relu,
};

fn boxed(layer: impl Layer + 'static) -> Box<dyn Layer> {
    Box::new(layer)
}

/// FC-n: flatten, then `n_layers` times \[Linear(-> `width`), BatchNorm1d, ReLU, feedback
/// point `fc_dfa.i`\], then Linear(`width` -> `classes`) named `fc_out`.
///
/// The reference uses width 800 for MNIST and Fashion-MNIST (`input_shape = [1, 28, 28]`)
/// and 1000 for CIFAR-10 (`[3, 32, 32]`).
///
/// ```
/// let mut rng = fdfa::init::rng(0);
/// let model = fdfa::model::fc(&[1, 28, 28], 2, 800, 10, &mut rng)?;
/// assert_eq!(model.feedback_points()[1].name, "fc_dfa.1");
/// # Ok::<(), fdfa::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] when a size is zero.
pub fn fc(
    input_shape: &[usize],
    n_layers: usize,
    width: usize,
    classes: usize,
    rng: &mut Rng,
) -> Result<Model> {
    let d_in: usize = input_shape.iter().product();
    if d_in == 0 || width == 0 || classes == 0 {
        return Err(Error::config(
            "fc",
            "sizes",
            "input, width and classes must be positive",
        ));
    }
    let mut blocks = Vec::new();
    let mut pending = vec![boxed(Flatten::new("flatten"))];
    let mut d = d_in;
    for i in 0..n_layers {
        pending.push(boxed(
            LinearConfig::new(d, width)
                .with_name(format!("fc_hidden.{i}"))
                .init(rng)?,
        ));
        pending.push(boxed(
            BatchNormConfig::d1(width)
                .with_name(format!("bn_hidden.{i}"))
                .init()?,
        ));
        pending.push(boxed(Relu::new(format!("relu.{i}"))));
        blocks.push(Block::hidden(
            format!("fc_dfa.{i}"),
            std::mem::take(&mut pending),
        ));
        d = width;
    }
    pending.push(boxed(
        LinearConfig::new(d, classes)
            .with_name("fc_out")
            .init(rng)?,
    ));
    blocks.push(Block::output(pending));
    Model::new(input_shape, blocks)
}

/// The reference's shallow CNN for `[c, h, w]` inputs (1x28x28 for MNIST, 3x32x32 for
/// CIFAR-10): Conv c->15 5x5, BN2d, ReLU, point `conv_1_dfa`; Conv 15->40 5x5, BN2d, ReLU,
/// point `conv_2_dfa`; MaxPool 2; Linear ->128, BN1d, ReLU, point `linear_1_dfa`;
/// Linear 128->`classes`.
///
/// ```
/// let mut rng = fdfa::init::rng(0);
/// let model = fdfa::model::shallow_cnn(&[1, 28, 28], 10, &mut rng)?;
/// assert_eq!(model.feedback_points()[1].shape, vec![40, 20, 20]);
/// # Ok::<(), fdfa::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] or [`Error::Shape`] when the input is too small or not 3-D.
pub fn shallow_cnn(input_shape: &[usize], classes: usize, rng: &mut Rng) -> Result<Model> {
    let &[c, h, w] = input_shape else {
        return Err(Error::shape("shallow_cnn", "[c, h, w]", input_shape));
    };
    if h < 12 || w < 12 {
        return Err(Error::shape(
            "shallow_cnn",
            "[c, h, w] with h, w >= 12",
            input_shape,
        ));
    }
    let flat = 40 * ((h - 8) / 2) * ((w - 8) / 2);
    let blocks = vec![
        Block::hidden(
            "conv_1_dfa",
            vec![
                boxed(Conv2dConfig::new(c, 15, 5).with_name("conv_1").init(rng)?),
                boxed(BatchNormConfig::d2(15).with_name("bn_1").init()?),
                boxed(Relu::new("relu_1")),
            ],
        ),
        Block::hidden(
            "conv_2_dfa",
            vec![
                boxed(Conv2dConfig::new(15, 40, 5).with_name("conv_2").init(rng)?),
                boxed(BatchNormConfig::d2(40).with_name("bn_2").init()?),
                boxed(Relu::new("relu_2")),
            ],
        ),
        Block::hidden(
            "linear_1_dfa",
            vec![
                boxed(MaxPool2d::new("pool", 2, 2)?),
                boxed(Flatten::new("flatten")),
                boxed(
                    LinearConfig::new(flat, 128)
                        .with_name("linear_1")
                        .init(rng)?,
                ),
                boxed(BatchNormConfig::d1(128).with_name("linear_1_bn").init()?),
                boxed(Relu::new("relu_3")),
            ],
        ),
        Block::output(vec![boxed(
            LinearConfig::new(128, classes)
                .with_name("fc_out")
                .init(rng)?,
        )]),
    ];
    Model::new(input_shape, blocks)
}

/// AlexNet with BatchNorm for `[3, 224, 224]` inputs (CIFAR-100 in the reference), dropout
/// off: five conv blocks (points `conv_1_dfa` .. `conv_5_dfa`), two hidden linear blocks of
/// 4096 (points `linear_1_dfa`, `linear_2_dfa`), and `fc_out`.
///
/// ```no_run
/// let mut rng = fdfa::init::rng(0);
/// let model = fdfa::model::alexnet_bn(100, &mut rng)?;
/// assert_eq!(model.feedback_points().len(), 7);
/// # Ok::<(), fdfa::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] when `classes` is zero.
pub fn alexnet_bn(classes: usize, rng: &mut Rng) -> Result<Model> {
    let conv = |i: usize,
                c_in: usize,
                c_out: usize,
                k: usize,
                s: usize,
                p: usize,
                rng: &mut Rng|
     -> Result<Vec<Box<dyn Layer>>> {
        Ok(vec![
            boxed(
                Conv2dConfig::new(c_in, c_out, k)
                    .with_stride(s)
                    .with_padding(p)
                    .with_name(format!("conv_{i}"))
                    .init(rng)?,
            ),
            boxed(
                BatchNormConfig::d2(c_out)
                    .with_name(format!("bn_{i}"))
                    .init()?,
            ),
            boxed(Relu::new(format!("relu_{i}"))),
        ])
    };
    let linear = |i: usize, d_in: usize, rng: &mut Rng| -> Result<Vec<Box<dyn Layer>>> {
        Ok(vec![
            boxed(
                LinearConfig::new(d_in, 4096)
                    .with_name(format!("linear_{i}"))
                    .init(rng)?,
            ),
            boxed(
                BatchNormConfig::d1(4096)
                    .with_name(format!("linear_{i}_bn"))
                    .init()?,
            ),
            boxed(Relu::new(format!("relu_linear_{i}"))),
        ])
    };
    let mut c1 = conv(1, 3, 64, 11, 4, 2, rng)?;
    c1.push(boxed(MaxPool2d::new("pool_1", 3, 2)?));
    let mut c2 = conv(2, 64, 192, 5, 1, 2, rng)?;
    c2.push(boxed(MaxPool2d::new("pool_2", 3, 2)?));
    let c3 = conv(3, 192, 384, 3, 1, 1, rng)?;
    let c4 = conv(4, 384, 256, 3, 1, 1, rng)?;
    let mut c5 = conv(5, 256, 256, 3, 1, 1, rng)?;
    c5.push(boxed(MaxPool2d::new("pool_5", 3, 2)?));
    c5.push(boxed(AdaptiveAvgPool2d::new("avgpool", 6, 6)?));
    c5.push(boxed(Flatten::new("flatten")));
    let blocks = vec![
        Block::hidden("conv_1_dfa", c1),
        Block::hidden("conv_2_dfa", c2),
        Block::hidden("conv_3_dfa", c3),
        Block::hidden("conv_4_dfa", c4),
        Block::hidden("conv_5_dfa", c5),
        Block::hidden("linear_1_dfa", linear(1, 256 * 6 * 6, rng)?),
        Block::hidden("linear_2_dfa", linear(2, 4096, rng)?),
        Block::output(vec![boxed(
            LinearConfig::new(4096, classes)
                .with_name("fc_out")
                .init(rng)?,
        )]),
    ];
    Model::new(&[3, 224, 224], blocks)
}
