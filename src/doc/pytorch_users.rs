//! # fdfa for PyTorch users
//!
//! How the reference implementation's pieces map onto this crate.
//!
//! | PyTorch reference | fdfa |
//! |---|---|
//! | `nn.Linear`, `nn.Conv2d`, `nn.BatchNorm1d/2d`, `nn.ReLU`, `nn.MaxPool2d`, `nn.AdaptiveAvgPool2d`, `nn.Flatten` | [`Linear`](crate::layers::Linear), [`Conv2d`](crate::layers::Conv2d), [`BatchNorm`](crate::layers::BatchNorm) ([`BatchNormConfig::d1`](crate::layers::BatchNormConfig::d1) / [`d2`](crate::layers::BatchNormConfig::d2)), [`Relu`](crate::layers::Relu), [`MaxPool2d`](crate::layers::MaxPool2d), [`AdaptiveAvgPool2d`](crate::layers::AdaptiveAvgPool2d), [`Flatten`](crate::layers::Flatten) — same default initialisation |
//! | `model.train()` / `model.eval()` | [`Model::forward_train`](crate::model::Model::forward_train) (batch statistics, running statistics updated) / [`Model::infer`](crate::model::Model::infer) (running statistics) |
//! | the training hooks (`fc_dfa.0`, `conv_1_dfa`, ...) | feedback points, named the same: [`Block::hidden`](crate::model::Block::hidden) |
//! | `--train-mode BP/DFA/DKP/FDFA` | [`RuleKind`](crate::rules::RuleKind), or [`Bp`](crate::rules::Bp), [`Dfa`](crate::rules::Dfa), [`Dkp`](crate::rules::Dkp), [`Fdfa`](crate::rules::Fdfa) |
//! | `torch.func.jvp` / dual tensors | [`Dual`](crate::Dual): `k` tangents stacked along the batch axis |
//! | `optim.Adam(model.parameters(), lr, weight_decay)` and the feedback optimizer | two [`Adam`](crate::optim::Adam) instances; [`Trainer`](crate::train::Trainer) holds both |
//! | `StepLR(step_size=1, gamma)` | [`StepLr`](crate::optim::StepLr) |
//! | `state_dict()` names | [`Model::visit_state`](crate::model::Model::visit_state) uses them (`fc_hidden.0.weight`, `bn_hidden.0.running_mean`, `fc_dfa.0.feedbacks`, ...) |
//! | `torch.manual_seed` | every random number comes from an explicit [`init::Rng`](crate::init::Rng) |
//!
//! ## What is the same
//!
//! - The rules compute what the reference computes, to float rounding: the test suite
//!   replays the reference's own numbers for two steps of every rule on a small FC and CNN
//!   (logits, output tangents, every gradient, the state after both Adam steps).
//! - Defaults: batch 64, Adam `lr = 1e-4` for both groups, `gamma = 0.95` per epoch for the
//!   forward group only, inputs scaled to `[-1, 1]`, DFA feedback Kaiming-uniform, DKP and
//!   FDFA feedback at zero; the test loss averages batches of the training batch size.
//!
//! ## What differs
//!
//! - Batches are `f32` and batch-major: `[N, features]` or `[N, C, H, W]`, as in PyTorch.
//! - Every public view of a parameter is in PyTorch's layout: [`Linear::weight`](crate::layers::Linear::weight)
//!   is `[out, in]`, as are the entries of
//!   [`Model::visit_state`](crate::model::Model::visit_state), checkpoints and the optimizer
//!   moments in them. Inside, a `Linear` keeps `Wᵀ` (as burn does) so that its forward
//!   product reads the weight contiguously; the optimizers, being elementwise, step on that
//!   storage without a copy.
//! - A `state_dict` path is the layer's name and the tensor's suffix. Layers left unnamed
//!   are named by their position (`0.1.weight`, as in nested `nn.Sequential`s), and
//!   [`Model::new`](crate::model::Model::new) refuses two layers with state of one name.
//! - Layers do not own autograd graphs. A rule calls the model's primitives explicitly:
//!   forward with a hook at each feedback point, block-local backward of one block or of all
//!   at once ([`Model::backward_local`](crate::model::Model::backward_local), which trains
//!   the blocks in parallel), or full backward.
//! - Threads: rayon's pool, sized by `RAYON_NUM_THREADS` (or `--threads` in the examples)
//!   where PyTorch has `torch.set_num_threads`. The results do not depend on the number of
//!   threads, to the bit. A loop of your own should run inside
//!   [`parallel::run`](crate::parallel::run), which enters the pool once.
//! - The optimizers run outside the rule; the feedback group steps first, both from the
//!   gradients computed before either stepped, as in the reference.
