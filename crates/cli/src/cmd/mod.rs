//! One module per command group. Each exposes its clap arguments and a `run` function that
//! returns `anyhow::Result<()>`; `main` prints the error and sets the exit code.

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod config;
pub(crate) mod exercise;
pub(crate) mod keys;
pub(crate) mod node;
pub(crate) mod operator;
pub(crate) mod relay;
pub(crate) mod roster;
