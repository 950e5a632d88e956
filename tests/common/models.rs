//! The small networks several test binaries build: the golden files' FC and CNN, and the
//! rules tests' networks.

use fdfa::init;
use fdfa::layers::{
    AdaptiveAvgPool2d, BatchNormConfig, Conv2dConfig, Flatten, Layer, LinearConfig, MaxPool2d, Relu,
};
use fdfa::model::{Block, Model};

/// A layer as the trait object a block holds.
pub fn boxed(l: impl Layer + 'static) -> Box<dyn Layer> {
    Box::new(l)
}

/// The golden files' FC: 6 -> 5 -> 4 -> 3 with BatchNorm, under the reference's names.
pub fn golden_fc() -> Model {
    let mut rng = init::rng(0);
    let blocks = vec![
        Block::hidden(
            "fc_dfa.0",
            vec![
                boxed(
                    LinearConfig::new(6, 5)
                        .with_name("fc_hidden.0")
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(
                    BatchNormConfig::d1(5)
                        .with_name("bn_hidden.0")
                        .init()
                        .unwrap(),
                ),
                boxed(Relu::new("relu.0")),
            ],
        ),
        Block::hidden(
            "fc_dfa.1",
            vec![
                boxed(
                    LinearConfig::new(5, 4)
                        .with_name("fc_hidden.1")
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(
                    BatchNormConfig::d1(4)
                        .with_name("bn_hidden.1")
                        .init()
                        .unwrap(),
                ),
                boxed(Relu::new("relu.1")),
            ],
        ),
        Block::output(vec![boxed(
            LinearConfig::new(4, 3)
                .with_name("fc_out")
                .init(&mut rng)
                .unwrap(),
        )]),
    ];
    Model::new(&[6], blocks).unwrap()
}

/// The golden files' CNN on `[2, 8, 8]` inputs, under the reference's names.
pub fn golden_cnn() -> Model {
    let mut rng = init::rng(0);
    let blocks = vec![
        Block::hidden(
            "conv_1_dfa",
            vec![
                boxed(
                    Conv2dConfig::new(2, 3, 3)
                        .with_padding(1)
                        .with_name("conv_1")
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(BatchNormConfig::d2(3).with_name("bn_1").init().unwrap()),
                boxed(Relu::new("relu_1")),
            ],
        ),
        Block::hidden(
            "conv_2_dfa",
            vec![
                boxed(
                    Conv2dConfig::new(3, 4, 3)
                        .with_padding(1)
                        .with_name("conv_2")
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(BatchNormConfig::d2(4).with_name("bn_2").init().unwrap()),
                boxed(Relu::new("relu_2")),
                boxed(MaxPool2d::new("pool", 3, 2).unwrap()),
                boxed(AdaptiveAvgPool2d::new("avgpool", 2, 2).unwrap()),
                boxed(Flatten::new("flatten")),
            ],
        ),
        Block::hidden(
            "linear_1_dfa",
            vec![
                boxed(
                    LinearConfig::new(16, 5)
                        .with_name("linear_1")
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(
                    BatchNormConfig::d1(5)
                        .with_name("linear_1_bn")
                        .init()
                        .unwrap(),
                ),
                boxed(Relu::new("relu_3")),
            ],
        ),
        Block::output(vec![boxed(
            LinearConfig::new(5, 3)
                .with_name("fc_out")
                .init(&mut rng)
                .unwrap(),
        )]),
    ];
    Model::new(&[2, 8, 8], blocks).unwrap()
}

/// A network whose gradients the finite-difference checks below exercise: a conv block
/// with BatchNorm2d and max pooling, a linear block with BatchNorm1d, and the output layer.
///
/// The pool sits before the feedback point: ReLU outputs are often exactly 0, and a window of
/// tied zeros makes the max a kink along a direction added after the ReLU, where central
/// differences stop measuring the (first-maximum) derivative PyTorch and this crate use.
pub fn small_cnn(seed: u64) -> Model {
    let mut rng = init::rng(seed);
    let blocks = vec![
        Block::hidden(
            "conv_1_dfa",
            vec![
                boxed(
                    Conv2dConfig::new(2, 3, 3)
                        .with_padding(1)
                        .with_name("conv_1")
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(BatchNormConfig::d2(3).with_name("bn_1").init().unwrap()),
                boxed(Relu::new("relu_1")),
                boxed(MaxPool2d::new("pool", 2, 2).unwrap()),
            ],
        ),
        Block::hidden(
            "linear_1_dfa",
            vec![
                boxed(Flatten::new("flatten")),
                boxed(
                    LinearConfig::new(3 * 3 * 3, 5)
                        .with_name("linear_1")
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(
                    BatchNormConfig::d1(5)
                        .with_name("linear_1_bn")
                        .init()
                        .unwrap(),
                ),
                boxed(Relu::new("relu_2")),
            ],
        ),
        Block::output(vec![boxed(
            LinearConfig::new(5, 3)
                .with_name("fc_out")
                .init(&mut rng)
                .unwrap(),
        )]),
    ];
    Model::new(&[2, 6, 6], blocks).unwrap()
}

/// FC 10 -> 16 -> 16 -> 3 with ReLU and no BatchNorm.
pub fn plain_fc(seed: u64) -> Model {
    let mut rng = init::rng(seed);
    let mut lin = |a, b, name: &str| {
        boxed(
            LinearConfig::new(a, b)
                .with_name(name)
                .init(&mut rng)
                .unwrap(),
        )
    };
    let blocks = vec![
        Block::hidden(
            "fc_dfa.0",
            vec![lin(10, 16, "fc_hidden.0"), boxed(Relu::new("r0"))],
        ),
        Block::hidden(
            "fc_dfa.1",
            vec![lin(16, 16, "fc_hidden.1"), boxed(Relu::new("r1"))],
        ),
        Block::output(vec![lin(16, 3, "fc_out")]),
    ];
    Model::new(&[10], blocks).unwrap()
}
