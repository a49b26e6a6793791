//! The benchmark's network on disk: participant keys, a signed roster built from the real
//! CICA roster template (38 participants) plus synthetic members, the relay's certificate,
//! and its configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hotline_config::roster_file::{Draft, DraftParticipant};
use hotline_net::Fingerprint;
use hotline_proto::{ParticipantId, PublicKey, Role, Signed, SigningKey};

/// The CICA roster template shipped in `config/`: 26 members, 11 observers, the Secretariat.
const CICA_ROSTER: &str = include_str!("../../../config/cica-roster.toml");

/// The Secretariat's participant id in the CICA roster.
pub const SECRETARIAT: &str = "SEC";

/// One participant the load generator speaks for.
#[derive(Clone)]
pub struct Peer {
    /// Its id.
    pub id: ParticipantId,
    /// Its signing key.
    pub key: SigningKey,
    /// Its role on the roster.
    pub role: Role,
}

/// A network written to a directory.
pub struct Network {
    /// The directory holding everything (the relay runs with it as its working directory).
    pub dir: PathBuf,
    /// Every participant, in roster order: the 38 CICA participants first.
    pub peers: Vec<Peer>,
    /// The relay certificate's fingerprint, which clients pin.
    pub fingerprint: Fingerprint,
    /// The relay configuration file.
    pub config: PathBuf,
    /// The roster version (clients say they hold it, so `Welcome` carries no roster).
    pub roster_version: u64,
}

/// A deterministic key for participant number `i` (benchmarks need no secrecy, and the same
/// keys make runs comparable).
fn key_for(i: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[0] = 0xB7;
    seed[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

impl Network {
    /// Writes a fresh network into `dir` (which must not hold one already): the CICA roster
    /// plus `extra` synthetic members per `(prefix, count)` (ids `PREFIX001`…), and a relay
    /// configuration whose `[limits]` table holds `limits_toml`.
    pub fn create(dir: &Path, extra: &[(&str, usize)], limits_toml: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let mut draft = Draft::parse(CICA_ROSTER, Path::new("config/cica-roster.toml"))?;
        for (prefix, count) in extra {
            for i in 1..=*count {
                let id = ParticipantId::new(&format!("{prefix}{i:03}"))?;
                draft.add_participant(DraftParticipant {
                    name: format!("Benchmark participant {id}"),
                    id,
                    role: Role::Member,
                    keys: vec![],
                    revoked: false,
                })?;
            }
        }
        let mut peers = Vec::with_capacity(draft.participants.len());
        for (i, p) in draft.participants.iter_mut().enumerate() {
            let key = key_for(i);
            p.keys = vec![PublicKey::of(&key)];
            peers.push(Peer {
                id: p.id.clone(),
                key,
                role: p.role,
            });
        }
        let roster = draft.to_roster(hotline_relay::now_ms())?;
        let roster_key = SigningKey::from_bytes(&[0xAA; 32]);
        let signed = Signed::sign(&roster, &roster_key)?;
        hotline_config::roster_file::write_signed_roster(&dir.join("roster.signed"), &signed)?;
        let fingerprint =
            hotline_net::tls::write_self_signed(&dir.join("relay.crt"), &dir.join("relay.key"))?;
        let config = dir.join("relay.toml");
        let net = Self {
            dir: dir.to_owned(),
            peers,
            fingerprint,
            config,
            roster_version: roster.version,
        };
        net.write_config("127.0.0.1:0", &PublicKey::of(&roster_key), limits_toml)?;
        Ok(net)
    }

    fn write_config(
        &self,
        listen: &str,
        roster_key: &PublicKey,
        limits: &str,
    ) -> anyhow::Result<()> {
        // The relay keeps its real durability: nothing here touches the store's settings.
        let text = format!(
            "listen = \"{listen}\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"roster.signed\"\nroster_key = \"{roster_key}\"\ndata_dir = \"relay-data\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n"
        );
        std::fs::write(&self.config, text).with_context(|| format!("{}", self.config.display()))
    }

    /// Pins the relay to `addr` (after a first start on port 0), so a restarted relay is
    /// where the clients reconnect.
    pub fn set_listen(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("listen = ") {
                    format!("listen = \"{addr}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&self.config, out.join("\n") + "\n")?;
        Ok(())
    }

    /// The participant with id `id`.
    pub fn peer(&self, id: &str) -> anyhow::Result<&Peer> {
        self.peers
            .iter()
            .find(|p| p.id.as_str() == id)
            .with_context(|| format!("no participant {id} in the benchmark roster"))
    }

    /// The relay database directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("relay-data")
    }
}
