//! Names that cannot collide: unnamed layers are named by position, user-given names must be
//! unique, the reference's networks keep the reference's `state_dict` names, and saving a
//! model whose tensors still share a name is an error, not a panic.

use fdfa::layers::{Layer, LinearConfig, Param, ParamMut, ParamRef, Relu, State, StateMut};
use fdfa::model::{Block, Model, fc, shallow_cnn};
use fdfa::train::checkpoint::save_model;
use fdfa::{Dual, Error, Result, Tensor};

fn names(model: &Model) -> Vec<String> {
    let mut out = Vec::new();
    model.visit_state(&mut |name, _| out.push(name.to_string()));
    out
}

#[test]
fn unnamed_layers_get_positional_paths() -> Result<()> {
    let mut rng = fdfa::init::rng(0);
    let model = Model::new(
        &[6],
        vec![
            Block::hidden(
                "h0",
                vec![
                    Box::new(LinearConfig::new(6, 5).init(&mut rng)?),
                    Box::new(Relu::new("")),
                ],
            ),
            Block::hidden(
                "h1",
                vec![Box::new(LinearConfig::new(5, 4).init(&mut rng)?)],
            ),
            Block::output(vec![Box::new(LinearConfig::new(4, 3).init(&mut rng)?)]),
        ],
    )?;
    assert_eq!(
        names(&model),
        [
            "0.0.weight",
            "0.0.bias",
            "1.0.weight",
            "1.0.bias",
            "2.0.weight",
            "2.0.bias"
        ]
    );
    assert_eq!(model.blocks()[0].layers()[1].name(), "0.1");
    Ok(())
}

#[test]
fn duplicate_names_are_refused_naming_both_layers() -> Result<()> {
    let mut rng = fdfa::init::rng(0);
    let linear = |d_in, d_out, name: &str, rng: &mut fdfa::init::Rng| -> Result<Box<dyn Layer>> {
        Ok(Box::new(
            LinearConfig::new(d_in, d_out).with_name(name).init(rng)?,
        ))
    };
    let err = Model::new(
        &[6],
        vec![
            Block::hidden("h0", vec![linear(6, 5, "fc", &mut rng)?]),
            Block::output(vec![linear(5, 3, "fc", &mut rng)?]),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }));
    assert!(
        err.to_string()
            .contains("layers 0.0 and 1.0 are both named `fc`"),
        "{err}"
    );
    let err = Model::new(
        &[6],
        vec![
            Block::hidden("p", vec![linear(6, 5, "a", &mut rng)?]),
            Block::hidden("p", vec![linear(5, 4, "b", &mut rng)?]),
            Block::output(vec![linear(4, 3, "c", &mut rng)?]),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("both named `p`"), "{err}");
    Ok(())
}

#[test]
fn the_reference_networks_keep_the_reference_names() -> Result<()> {
    let mut rng = fdfa::init::rng(0);
    let model = fc(&[1, 28, 28], 2, 8, 10, &mut rng)?;
    assert_eq!(
        names(&model),
        [
            "fc_hidden.0.weight",
            "fc_hidden.0.bias",
            "bn_hidden.0.weight",
            "bn_hidden.0.bias",
            "bn_hidden.0.running_mean",
            "bn_hidden.0.running_var",
            "bn_hidden.0.num_batches_tracked",
            "fc_hidden.1.weight",
            "fc_hidden.1.bias",
            "bn_hidden.1.weight",
            "bn_hidden.1.bias",
            "bn_hidden.1.running_mean",
            "bn_hidden.1.running_var",
            "bn_hidden.1.num_batches_tracked",
            "fc_out.weight",
            "fc_out.bias",
        ]
    );
    let cnn = shallow_cnn(&[1, 28, 28], 10, &mut rng)?;
    let cnn_names = names(&cnn);
    assert_eq!(cnn_names[0], "conv_1.weight");
    assert!(cnn_names.contains(&"linear_1_bn.running_var".to_string()));
    assert_eq!(cnn_names.last().map(String::as_str), Some("fc_out.bias"));
    Ok(())
}

/// A custom layer that keeps no name (it ignores `set_name`): two of them share their
/// tensors' names.
#[derive(Clone, Debug)]
struct Scale(Param);

impl Layer for Scale {
    fn name(&self) -> &str {
        ""
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        *output = input.clone();
        Ok(())
    }
    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        output.assign(input);
        Ok(())
    }
    fn backward(
        &mut self,
        _input: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
    ) -> Result<()> {
        if let Some(g) = grad_input {
            g.assign(grad_output);
        }
        Ok(())
    }
    fn visit_state(&self, f: &mut dyn FnMut(&str, State<'_>)) {
        f("weight", State::Param(ParamRef::new(&self.0)));
    }
    fn visit_state_mut(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>)) {
        f("weight", StateMut::Param(ParamMut::new(&mut self.0)));
    }
}

#[test]
fn saving_tensors_that_share_a_name_is_an_error_not_a_panic() -> Result<()> {
    let mut rng = fdfa::init::rng(0);
    let scale = || Box::new(Scale(Param::new(Tensor::zeros(&[1])))) as Box<dyn Layer>;
    let model = Model::new(
        &[3],
        vec![
            Block::hidden("h", vec![scale()]),
            Block::output(vec![
                scale(),
                Box::new(LinearConfig::new(3, 2).init(&mut rng)?),
            ]),
        ],
    )?;
    let path = std::env::temp_dir().join(format!("fdfa-naming-{}.safetensors", std::process::id()));
    let err = save_model(&path, &model).unwrap_err();
    assert!(
        err.to_string().contains("two tensors are named `.weight`"),
        "{err}"
    );
    assert!(!path.exists());
    Ok(())
}

/// FG-W needs every layer's parameter JVP: a custom layer with parameters that does not
/// implement it is an error, not a silently missing term.
#[test]
fn fgw_refuses_a_layer_without_its_parameter_jvp() -> Result<()> {
    use fdfa::rules::{ForwardGradientWeight, LearningRule};
    let mut rng = fdfa::init::rng(0);
    let mut model = Model::new(
        &[3],
        vec![
            Block::hidden(
                "h",
                vec![
                    Box::new(LinearConfig::new(3, 3).init(&mut rng)?),
                    Box::new(Scale(Param::new(Tensor::zeros(&[1])))),
                ],
            ),
            Block::output(vec![Box::new(LinearConfig::new(3, 2).init(&mut rng)?)]),
        ],
    )?;
    let x = Tensor::zeros(&[2, 3]);
    let err = ForwardGradientWeight::new()
        .step(&mut model, &x, &[0, 1], &mut rng)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(
        err.to_string().contains("does not implement their JVP"),
        "{err}"
    );
    Ok(())
}
