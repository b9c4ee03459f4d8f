//! Models: the activation plan, the shared blocks and one folder per architecture family.

pub mod activation;
pub mod gpt2;
pub mod inspect;
pub mod load;
pub mod plan;
