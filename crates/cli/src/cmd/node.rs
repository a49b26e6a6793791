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
    /// Shut down when standard input closes (for the drill harness; see `StdinTether`).
    #[arg(long, hide = true)]
    stop_when_stdin_closes: bool,
}

pub(crate) fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config).map_err(super::CannotStart::classify)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut signals = super::Signals::catch()?;
        let mut tether = super::StdinTether::new(args.stop_when_stdin_closes)?;
        let handle = Node::spawn(config)
            .await
            .map_err(super::CannotStart::classify)?;
        loop {
            tokio::select! {
                _ = signals.term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
                _ = signals.int.recv() => { tracing::info!("SIGINT: shutting down"); break }
                _ = tether.closed() => { tracing::info!("standard input closed (the drill harness that started this node is gone): shutting down"); break }
                // The node has nothing to reload; a hang-up must not end it.
                _ = signals.hup.recv() => tracing::info!("SIGHUP ignored: the node has nothing to reload"),
            }
        }
        handle.shutdown().await;
        Ok(())
    })
}
