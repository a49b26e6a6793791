//! `hotline node --config FILE`: run a contact point's node daemon.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use hotline_node::{Node, NodeConfig};

/// Run the node daemon.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node configuration file (see config/node.toml).
    #[arg(long, short)]
    config: PathBuf,
}

pub(crate) fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let handle = Node::spawn(config).await?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        handle.shutdown().await;
        Ok(())
    })
}
