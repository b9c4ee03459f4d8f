//! Every use the command line makes of the concrete model type (`Gpt2`, its activation plan,
//! `Gpt2Config`), in one place, so that the commands follow a change of model interface here.

use crate::model::gpt2::Gpt2;
use crate::model::load::Loaded;
use crate::model::plan::ActivationPlan;

/// The model type the commands run.
pub(super) type Model = Gpt2;

/// The positions the model attends over (`n_positions`): the default window, and where
/// generation stops.
pub(super) fn context_len(loaded: &Loaded) -> usize {
    loaded.config.n_positions
}

/// The number of transformer blocks (`n_layer`).
pub(super) fn n_layer(loaded: &Loaded) -> usize {
    loaded.config.n_layer
}

/// The activation plan the model was loaded with.
pub(super) fn plan(model: &Model) -> &ActivationPlan {
    model.plan()
}

/// Whether `--activation` changed the activation of at least one layer.
pub(super) fn is_swapped(model: &Model) -> bool {
    !model.plan().swapped_layers().is_empty()
}

/// The same weights with the checkpoint's own activation in every layer.
pub(super) fn original_model(loaded: &Loaded) -> Model {
    let plan = ActivationPlan::original(loaded.model.plan().original, n_layer(loaded));
    loaded.model.with_plan(plan)
}

/// How `generate` names a model: `gelu_new (original)`, or the swap (`sigmoid@0-2`).
pub(super) fn generation_label(model: &Model) -> String {
    let plan = model.plan();
    if plan.swapped_layers().is_empty() {
        format!("{} (original)", plan.original)
    } else {
        plan.describe()
    }
}

/// The end-of-text token: the config's `eos_token_id`, else the tokenizer's `<|endoftext|>`.
pub(super) fn eos_id(loaded: &Loaded) -> Option<u32> {
    loaded
        .config
        .eos_id()
        .or_else(|| loaded.tokenizer.token_to_id("<|endoftext|>"))
}
