//! `hotline relay`: run the Secretariat's relay, or create its certificate.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use hotline_relay::{Relay, RelayConfig};

/// `hotline relay --config FILE` runs the relay; `hotline relay init` creates its certificate.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RelayArgs {
    /// The relay configuration file (see config/relay.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<RelayCommand>,
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Create a self-signed certificate and key for the relay and print the fingerprint
    /// that nodes pin (`fingerprint` under `[[relays]]` in node.toml).
    Init {
        /// Where to write the certificate (PEM).
        #[arg(long, default_value = "relay.crt")]
        cert: PathBuf,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long, default_value = "relay.key")]
        key: PathBuf,
    },
    /// Print the fingerprint of an existing certificate.
    Fingerprint {
        /// The certificate (PEM).
        #[arg(long, default_value = "relay.crt")]
        cert: PathBuf,
        /// Its private key (PEM), checked to load.
        #[arg(long, default_value = "relay.key")]
        key: PathBuf,
    },
}

pub(crate) fn run(args: RelayArgs) -> anyhow::Result<()> {
    match (args.command, args.config) {
        (Some(RelayCommand::Init { cert, key }), _) => {
            let fp = hotline_net::tls::write_self_signed(&cert, &key)?;
            outln!("certificate: {}", cert.display());
            outln!("key:         {}", key.display());
            outln!("fingerprint: {fp}");
            Ok(())
        }
        (Some(RelayCommand::Fingerprint { cert, key }), _) => {
            let id = hotline_net::RelayIdentity::load(&cert, &key)?;
            outln!("{}", id.fingerprint());
            Ok(())
        }
        (None, Some(config)) => serve(config),
        (None, None) => anyhow::bail!("give --config FILE to run the relay, or `relay init`"),
    }
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = RelayConfig::load(&path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let handle = Relay::spawn(config).await?;
        if let Some(m) = handle.metrics_addr() {
            tracing::info!(addr = %m, "metrics on http://{m}/metrics, health on http://{m}/health");
        }
        let stopped = wait_for_signals(&handle).await;
        handle.shutdown().await;
        match stopped? {
            None => Ok(()),
            Some(reason) => anyhow::bail!("the relay stopped on its own: {reason}"),
        }
    })
}

/// Waits for SIGTERM or SIGINT (shutdown; `None`) or for the relay to stop on its own (its
/// reason); reloads the roster on SIGHUP.
async fn wait_for_signals(handle: &hotline_relay::RelayHandle) -> anyhow::Result<Option<String>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(None) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(None) }
            reason = handle.failed() => return Ok(Some(reason)),
            _ = hup.recv() => match handle.reload_roster() {
                Ok(v) => tracing::info!(version = v, "SIGHUP: roster reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: roster not reloaded; the previous one stays in force"),
            },
        }
    }
}
