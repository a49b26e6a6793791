//! What a simulated network needs on disk: participant keys, the signed roster, the relay's
//! certificate and configuration, and the node stores, all in one temporary directory.
//!
//! Everything that could change the size of a packet is fixed: the relay's certificate is
//! Ed25519 (TLS 1.3 `CertificateVerify` signatures are then always 64 bytes, where ECDSA's
//! DER encoding varies by a byte or two) and derived from a constant seed, and every
//! participant key is derived from the participant's index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hotline_net::Fingerprint;
use hotline_proto::{
    Participant, ParticipantId, PublicKey, Role, Roster, Signed, SigningKey, Verified,
    PROTOCOL_VERSION,
};

/// The sending participant.
pub const SENDER: &str = "KAZ";
/// The receiving participant.
pub const RECIPIENT: &str = "MNG";

/// Host names on the simulated network.
pub const RELAY_HOST: &str = "relay";
/// The sender's host.
pub const SENDER_HOST: &str = "sender";
/// The recipient's host.
pub const RECIPIENT_HOST: &str = "recipient";

/// The relay's QUIC port on its simulated host.
pub const RELAY_PORT: u16 = 7400;

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A temporary hotline network: roster, keys, relay certificate and configuration.
pub struct Fixture {
    /// The directory holding everything (removed when dropped).
    pub dir: tempfile::TempDir,
    /// Each participant's signing key.
    pub keys: BTreeMap<String, SigningKey>,
    /// The roster in force.
    pub roster: Verified<Roster>,
    /// The relay certificate's fingerprint, which clients pin.
    pub fingerprint: Fingerprint,
    /// The relay's configuration file.
    pub relay_config: PathBuf,
}

fn pid(s: &str) -> anyhow::Result<ParticipantId> {
    ParticipantId::new(s).map_err(|e| anyhow::anyhow!("participant id {s:?}: {e}"))
}

impl Fixture {
    /// Writes the network for [`SENDER`] and [`RECIPIENT`] (both members).
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut keys = BTreeMap::new();
        let mut participants = Vec::new();
        // A roster needs an active Secretariat; it takes no part in the simulation.
        let cast = [
            (SENDER, Role::Member),
            (RECIPIENT, Role::Member),
            ("CICA", Role::Secretariat),
        ];
        for (i, (id, role)) in cast.into_iter().enumerate() {
            let mut seed = [0u8; 32];
            seed[0] = 0x51;
            seed[1] = i as u8;
            let k = SigningKey::from_bytes(&seed);
            participants.push(Participant {
                id: pid(id)?,
                name: format!("Participant {id}"),
                role,
                keys: vec![PublicKey::of(&k)],
                revoked: false,
            });
            keys.insert(id.to_owned(), k);
        }
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version: 1,
            issued_at_ms: 1,
            network: "SIM".into(),
            participants,
            groups: vec![],
        };
        let roster_key = SigningKey::from_bytes(&[0x5A; 32]);
        let signed = Signed::sign(&roster, &roster_key)?;
        let roster_path = dir.path().join("roster.signed");
        hotline_config::roster_file::write_signed_roster(&roster_path, &signed)?;
        let roster = hotline_proto::verify_roster(&signed, &PublicKey::of(&roster_key))?;

        let fingerprint = write_relay_identity(dir.path())?;
        let relay_config = dir.path().join("relay.toml");
        std::fs::write(
            &relay_config,
            format!(
                "listen = \"0.0.0.0:{RELAY_PORT}\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\n\
                 roster = \"roster.signed\"\nroster_key = \"{}\"\ndata_dir = \"relay-data\"\n\
                 metrics_listen = \"\"\n",
                PublicKey::of(&roster_key)
            ),
        )?;
        Ok(Self {
            dir,
            keys,
            roster,
            fingerprint,
            relay_config,
        })
    }

    /// The fixture's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The relay's configuration, as the relay reads it.
    pub fn relay_config(&self) -> anyhow::Result<hotline_relay::RelayConfig> {
        Ok(hotline_relay::RelayConfig::load(&self.relay_config)?)
    }

    /// The relay's database file.
    pub fn relay_db(&self) -> PathBuf {
        self.path()
            .join("relay-data")
            .join(hotline_relay::store::DB_FILE)
    }

    /// A participant's key.
    pub fn key(&self, id: &str) -> anyhow::Result<SigningKey> {
        self.keys.get(id).cloned().context("no such participant")
    }
}

/// Writes relay.crt and relay.key: a self-signed Ed25519 certificate from a constant seed,
/// so that every run presents the same bytes. Returns its fingerprint.
fn write_relay_identity(dir: &Path) -> anyhow::Result<Fingerprint> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&[0x3C; 32]);
    let key = rcgen::KeyPair::try_from(pkcs8.as_slice())?;
    let params = rcgen::CertificateParams::new(vec![
        hotline_net::tls::RELAY_SERVER_NAME.to_owned(),
        "localhost".to_owned(),
    ])?;
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("relay.crt"), cert.pem())?;
    // Owner only, as `hotline relay init` writes it: the relay refuses a key others may read.
    hotline_config::write_new(
        &dir.join("relay.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(Fingerprint::of(cert.der()))
}
