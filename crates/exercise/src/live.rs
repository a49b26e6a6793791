//! Live mode: the endpoints file that names an existing deployment's nodes. Every sender of
//! the scenario's injects needs an entry; a drill that names one without is refused before
//! any node is called. Other nodes need none: every recipient is scored from its sender's
//! delivery table (the delivered and acknowledged receipts that reached the sender), and
//! a recipient with an entry also from its inbox (the message held, shown once, as
//! exercise).
//!
//! ```toml
//! roster = "/etc/hotline/roster.signed"   # the roster in force
//! roster_key = "64 hex digits, or a .pub file"
//!
//! [nodes.SEC]
//! api = "127.0.0.1:7500"
//! token_file = "/etc/hotline/api.token"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use hotline_config::text_file;
use hotline_node::client::ApiClient;

use crate::run::Live;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoints {
    roster: PathBuf,
    roster_key: String,
    nodes: BTreeMap<String, Endpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoint {
    api: String,
    token_file: PathBuf,
}

/// Reads an endpoints file (paths relative to it) into a live deployment.
pub fn load(path: &Path) -> anyhow::Result<Live> {
    let text = text_file::read_config(path)?;
    // The service configurations' parser: its errors name the file, and never quote a key
    // (`roster_key` pasted unquoted, perhaps a secret seed), as the TOML parser's own do.
    let e: Endpoints = text_file::parse_toml(&text, path).context("endpoints file")?;
    // Checked before anything is read or called: an empty or cut address was found only at
    // the first inject, as "no node answering at http://".
    for (id, n) in &e.nodes {
        hotline_node::client::check_api_addr(&n.api).map_err(|why| {
            anyhow::anyhow!("{}: [nodes.{id}] api = {:?}: {why}", path.display(), n.api)
        })?;
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let key = hotline_config::keyfile::resolve_public_in(&e.roster_key, base)?;
    let roster = hotline_config::roster_file::read_verified_roster(&rel(&e.roster), &key)?;
    let mut clients = BTreeMap::new();
    for (id, n) in e.nodes {
        let pid = hotline_proto::ParticipantId::new(&id)?;
        if roster.participant(&pid).is_none() {
            anyhow::bail!(
                "{}: node {id} is not on roster version {}",
                path.display(),
                roster.version
            );
        }
        let token =
            text_file::read_token(&rel(&n.token_file)).with_context(|| format!("token of {id}"))?;
        clients.insert(id, ApiClient::new(&n.api, &token));
    }
    if clients.is_empty() {
        anyhow::bail!("{}: no [nodes.ID] entries", path.display());
    }
    Ok(Live {
        roster: roster.value().clone(),
        clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's `api` that is no `HOST:PORT` is refused when the file is read, naming the
    /// file, the node and what is expected, before any node is called.
    #[test]
    fn an_api_address_that_is_no_address_is_refused_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("endpoints.toml");
        std::fs::write(
            &path,
            "roster = \"roster.signed\"\nroster_key = \"k.pub\"\n\n[nodes.SEC]\napi = \"\"\ntoken_file = \"t\"\n",
        )
        .expect("write");
        let e = match load(&path) {
            Ok(_) => panic!("an empty api address is refused"),
            Err(e) => format!("{e:#}"),
        };
        // Refused for the address, before the roster (there is none here) is read.
        assert!(
            e.contains("endpoints.toml")
                && e.contains("[nodes.SEC] api")
                && e.contains("HOST:PORT"),
            "{e}"
        );
    }

    /// A key pasted unquoted makes the line fail to parse; the error names the file and the
    /// line but does not repeat the digits, which may be a secret seed.
    #[test]
    fn a_key_in_a_line_that_does_not_parse_is_not_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("endpoints.toml");
        let seed = "4f3a".repeat(16);
        std::fs::write(
            &path,
            format!("roster = \"roster.signed\"\nroster_key = {seed}\n"),
        )
        .expect("write");
        let e = load(&path).expect_err("refused");
        let shown = format!("{e:#}");
        assert!(!shown.contains(&seed), "{shown}");
        assert!(
            shown.contains("endpoints.toml") && shown.contains("line 2"),
            "{shown}"
        );
    }
}
