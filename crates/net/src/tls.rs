//! TLS: the relay's certificate, and pinning it on the node side.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use hotline_config::limits::TLS_PEM_FILE_BYTES_MAX;

use crate::NetError;

/// The server name nodes present; with pinning it names the service, not a DNS host.
pub const RELAY_SERVER_NAME: &str = "hotline-relay";

/// SHA-256 of a certificate's DER encoding: what a node pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let mut b = [0u8; 32];
        hex::decode_to_slice(clean.trim(), &mut b).map_err(|_| {
            NetError::Tls(format!(
                "certificate fingerprint {s:?} must be 64 hexadecimal digits (SHA-256)"
            ))
        })?;
        Ok(Self(b))
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's certificate chain and private key, loaded from PEM files.
pub struct RelayIdentity {
    /// Certificate chain, end-entity first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl RelayIdentity {
    /// Creates a self-signed certificate for the relay; returns (cert PEM, key PEM, fingerprint).
    pub fn generate() -> Result<(String, String, Fingerprint), NetError> {
        let ck = rcgen::generate_simple_self_signed(vec![
            RELAY_SERVER_NAME.to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| NetError::Tls(e.to_string()))?;
        let fp = Fingerprint::of(ck.cert.der());
        Ok((ck.cert.pem(), ck.key_pair.serialize_pem(), fp))
    }

    /// Loads a certificate chain and key from PEM files, each read with a limit
    /// ([`TLS_PEM_FILE_BYTES_MAX`]): a path naming something endless (`/dev/zero`) is an
    /// error naming it, not a hang. A key file the group or others may access is refused
    /// (`TextFileError::Secret`, naming the file, its mode and the `chmod 600` to run), as a
    /// participant's secret key file is: whoever reads the key can impersonate the relay.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, NetError> {
        let cert_pem = read_pem(cert_path)?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NetError::Tls(format!("{}: {e}", cert_path.display())))?;
        if certs.is_empty() {
            return Err(NetError::Tls(format!(
                "{}: no certificate found",
                cert_path.display()
            )));
        }
        // Refused if the group or others may read it, as a participant's secret key file
        // is (`hotline relay init` writes it 0600); zeroed when dropped: the parsed key is
        // all that is kept.
        let key_pem = hotline_config::text_file::read_secret(key_path, TLS_PEM_FILE_BYTES_MAX)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| NetError::Tls(format!("{}: {e}", key_path.display())))?;
        let identity = Self { certs, key };
        // The relay's TLS configuration is built now, as the relay builds it at start, so
        // that every tool that loads a pair (`config check`, `relay fingerprint`) refuses
        // what the relay would refuse: above all a key that is not the certificate's.
        identity.server_tls().map_err(|e| {
            let (cert, key) = (cert_path.display(), key_path.display());
            NetError::Tls(match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "{key}: not the private key of the certificate {cert}; give the key \
                     written with that certificate (`hotline relay init` writes a pair)"
                ),
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    format!("{cert}: {e}")
                }
                e => format!("{cert} with {key}: {e}"),
            })
        })?;
        Ok(identity)
    }

    /// The pinned fingerprint of the end-entity certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        // `load` refuses an empty chain.
        Fingerprint::of(self.certs.first().map(|c| c.as_ref()).unwrap_or_default())
    }

    /// The QUIC stateless-reset key, derived from the private key so that it is the same after
    /// a restart (and differs between relays).
    pub fn reset_key(&self) -> ring::hmac::Key {
        let mut h = Sha256::new();
        h.update(b"cica-hotline/1 stateless reset\0");
        h.update(self.key.secret_der());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &h.finalize())
    }

    /// The key of the relay's connection-id generator, stable across restarts.
    pub fn cid_key(&self) -> u64 {
        let mut h = Sha256::new();
        h.update(b"cica-hotline/1 connection ids\0");
        h.update(self.key.secret_der());
        let d = h.finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// A rustls server configuration: TLS 1.3 only, ALPN `cica-hotline/1`, no client certs.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, NetError> {
        self.server_tls().map_err(|e| NetError::Tls(e.to_string()))
    }

    /// [`RelayIdentity::server_config`], with rustls' own error.
    fn server_tls(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![hotline_proto::frame::ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }
}

/// Accepts exactly the pinned certificates, and still checks the TLS 1.3 handshake
/// signature, so the peer must hold the pinned certificate's private key.
#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of(end_entity);
        if self.pins.contains(&fp) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::error!(presented = %fp, "relay certificate does not match the pinned fingerprint");
            Err(rustls::Error::General(pin_mismatch_reason(&fp)))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never negotiated: the client config allows TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What [`PinnedVerifier`] says of a certificate it refuses. quinn keeps only this text (in
/// the local `TransportError` that ends the handshake), so [`pin_mismatch`] reads it back:
/// the two must agree, and a test holds them to it.
fn pin_mismatch_reason(presented: &Fingerprint) -> String {
    format!("relay certificate {presented} {PIN_MISMATCH_TAIL}")
}

/// The end of [`pin_mismatch_reason`]'s text.
const PIN_MISMATCH_TAIL: &str = "does not match the pinned fingerprint";

/// The fingerprint of the certificate this side refused for not being the pinned one, if
/// `e` is that refusal: a TLS alert this side raised itself (`handshake_failure`) with the
/// verifier's words. A peer cannot cause it by what it sends in a close: that arrives as
/// `ConnectionClosed`, not as a local `TransportError`.
pub(crate) fn pin_mismatch(e: &quinn::ConnectionError) -> Option<Fingerprint> {
    let quinn::ConnectionError::TransportError(t) = e else {
        return None;
    };
    let alert = u8::from(rustls::AlertDescription::HandshakeFailure);
    if t.code != quinn::TransportErrorCode::crypto(alert) {
        return None;
    }
    let (_, rest) = t.reason.split_once("relay certificate ")?;
    let (fp, tail) = rest.split_once(' ')?;
    (tail == PIN_MISMATCH_TAIL).then(|| fp.parse().ok())?
}

/// Reads a PEM file with a limit; the error names the file.
fn read_pem(path: &Path) -> Result<String, NetError> {
    Ok(hotline_config::text_file::read(
        path,
        TLS_PEM_FILE_BYTES_MAX,
    )?)
}

/// A rustls client configuration that trusts only the pinned relay certificates.
pub fn client_config(pins: Vec<Fingerprint>) -> Result<rustls::ClientConfig, NetError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pins, provider }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![hotline_proto::frame::ALPN.to_vec()];
    Ok(cfg)
}

/// Writes a fresh self-signed certificate and key (mode 0600) to the given paths, refusing
/// to overwrite existing files. Returns the fingerprint nodes pin.
///
/// Either both files are written or neither is left behind: both paths are checked before
/// anything is written, and the key is removed if the certificate cannot be written, so
/// that a failure never leaves half a pair that makes the next attempt fail on the key.
pub fn write_self_signed(cert_path: &Path, key_path: &Path) -> Result<Fingerprint, NetError> {
    if cert_path == key_path {
        return Err(NetError::Tls(format!(
            "{}: the certificate and the key must be two files",
            cert_path.display()
        )));
    }
    for path in [cert_path, key_path] {
        // `symlink_metadata`: a dangling symbolic link also makes the creation fail.
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(NetError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; refusing to overwrite it (nothing was written)",
                ),
            });
        }
    }
    let (cert, key, fp) = RelayIdentity::generate()?;
    let key = Zeroizing::new(key);
    write_new(key_path, key.as_bytes(), 0o600)?;
    if let Err(e) = write_new(cert_path, cert.as_bytes(), 0o644) {
        if let Err(rm) = std::fs::remove_file(key_path) {
            tracing::warn!(key = %key_path.display(), error = %rm, "cannot remove the key written for a certificate that could not be written; remove it by hand");
        }
        return Err(e);
    }
    Ok(fp)
}

/// Creates `path` with `mode` holding `bytes` (`hotline_config::write_new`: synced with its
/// directory, removed again if the write fails).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NetError> {
    hotline_config::write_new(path, bytes, mode).map_err(|source| NetError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_config::TextFileError;
    use std::path::PathBuf;
    use std::time::Duration;

    /// Longest a load may take: it reads at most 64 KiB of each file.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Loads on another thread, failing if the load has not returned by [`DEADLINE`].
    fn load_in_time(cert: PathBuf, key: PathBuf) -> Result<RelayIdentity, NetError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(RelayIdentity::load(&cert, &key));
        });
        rx.recv_timeout(DEADLINE)
            .expect("the load returns in time (it must not read without a limit)")
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_certificate_or_key_is_refused_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("relay.crt");
        let key = dir.path().join("relay.key");
        let fp = write_self_signed(&cert, &key).expect("init");
        let id = load_in_time(cert.clone(), key.clone()).expect("a real pair loads");
        assert_eq!(id.fingerprint(), fp);

        let zero = PathBuf::from("/dev/zero");
        // A key too large is refused at the limit too; `/dev/zero` itself, readable by
        // all, is refused as a key before it is read (below).
        let large = dir.path().join("large.key");
        std::fs::write(&large, vec![b'A'; TLS_PEM_FILE_BYTES_MAX + 1]).expect("write");
        set_mode(&large, 0o600);
        for (c, k, named) in [
            (zero.clone(), key, "/dev/zero"),
            (cert.clone(), large, "large.key"),
        ] {
            let e = load_in_time(c, k).err().expect("refused");
            assert!(
                matches!(
                    e,
                    NetError::TlsFile(TextFileError::TooLarge {
                        max: TLS_PEM_FILE_BYTES_MAX,
                        ..
                    })
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains(named), "{e}");
        }
        let e = load_in_time(cert, zero).err().expect("refused");
        assert!(
            matches!(e, NetError::TlsFile(TextFileError::Secret(_))),
            "{e:?}"
        );
        assert!(e.to_string().contains("/dev/zero"), "{e}");
    }

    #[cfg(unix)]
    fn set_mode(path: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Whoever reads the relay's key can impersonate the relay: a key the group or others
    /// may read is refused, as a participant's secret key file is, naming the file, its mode
    /// and the fix.
    #[cfg(unix)]
    #[test]
    fn a_key_the_group_or_others_may_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        write_self_signed(&cert, &key).expect("init");
        for mode in [0o640, 0o604] {
            set_mode(&key, mode);
            let e = RelayIdentity::load(&cert, &key).err().expect("refused");
            let text = e.to_string();
            assert!(
                text.contains("relay.key")
                    && text.contains(&format!("{mode:04o}"))
                    && text.contains("chmod 600"),
                "{text}"
            );
        }
        set_mode(&key, 0o600);
        RelayIdentity::load(&cert, &key).expect("owner only");
        // The certificate is public: any mode will do.
        set_mode(&cert, 0o644);
        RelayIdentity::load(&cert, &key).expect("a certificate readable by all");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let (cert2, key2) = (dir.path().join("other.crt"), dir.path().join("other.key"));
        write_self_signed(&cert, &key).expect("init");
        write_self_signed(&cert2, &key2).expect("init");
        RelayIdentity::load(&cert, &key).expect("a pair loads");
        let e = RelayIdentity::load(&cert, &key2).err().expect("refused");
        let text = e.to_string();
        assert!(
            text.contains("not the private key")
                && text.contains("relay.crt")
                && text.contains("other.key"),
            "{text}"
        );
    }

    #[test]
    fn init_leaves_both_files_or_neither() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("new.key"));
        std::fs::write(&cert, "an older certificate").expect("write");
        let e = write_self_signed(&cert, &key).expect_err("the certificate exists");
        assert!(e.to_string().contains("relay.crt"), "{e}");
        assert!(!key.exists(), "a key was written without its certificate");
        assert_eq!(
            std::fs::read_to_string(&cert).expect("read"),
            "an older certificate"
        );

        // The certificate cannot be created (no such directory) after the key was written.
        let nowhere = dir.path().join("missing").join("relay.crt");
        let e = write_self_signed(&nowhere, &key).expect_err("no directory");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(!key.exists(), "the key of a failed init was left behind");

        let e = write_self_signed(&key, &key).expect_err("one file for two");
        assert!(e.to_string().contains("two files"), "{e}");
        assert!(!key.exists());

        // Nothing left behind: the same command succeeds once the path is free.
        std::fs::remove_file(&cert).expect("rm");
        let fp = write_self_signed(&cert, &key).expect("init");
        assert_eq!(
            RelayIdentity::load(&cert, &key)
                .expect("load")
                .fingerprint(),
            fp
        );
    }

    /// A relay presenting another certificate than the pinned one is refused in the TLS
    /// handshake, and the refusal reads as `PinMismatch` naming the certificate presented
    /// (a node's link counts it as lasting, unlike a timeout).
    #[tokio::test]
    async fn a_certificate_not_pinned_is_refused_as_a_pin_mismatch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let presented = write_self_signed(&cert, &key).expect("init");
        let identity = RelayIdentity::load(&cert, &key).expect("load");
        let limits = crate::TransportLimits::default();
        let local = "127.0.0.1:0".parse().expect("address");
        let relay =
            crate::transport::server_endpoint(local, &identity, &limits).expect("relay endpoint");
        let addr = relay.local_addr().expect("relay address");
        // The relay answers the handshake, which the node's alert ends.
        let accepting = tokio::spawn(async move {
            if let Some(incoming) = relay.accept().await {
                let _ = incoming.await;
            }
            relay
        });
        let pinned = Fingerprint([7; 32]);
        let node =
            crate::transport::client_endpoint(local, vec![pinned], &limits).expect("node endpoint");
        let e = match crate::connect(&node, addr, DEADLINE).await {
            Ok(_) => panic!("a certificate that is not the pinned one was accepted"),
            Err(e) => e,
        };
        assert!(
            matches!(e, NetError::PinMismatch { presented: p } if p == presented),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("TLS: relay certificate {presented} does not match the pinned fingerprint")
        );
        // The pinned certificate is taken, from the same relay.
        let node = crate::transport::client_endpoint(local, vec![presented], &limits)
            .expect("node endpoint");
        let relay = accepting.await.expect("accept task");
        let accepting = tokio::spawn(async move { relay.accept().await?.await.ok() });
        crate::connect(&node, addr, DEADLINE)
            .await
            .expect("the pinned certificate is taken");
        assert!(accepting.await.expect("accept task").is_some());
    }

    /// Only this side's own refusal of a certificate is a pin mismatch: the same words in a
    /// close the peer sent, or another local TLS failure, are not.
    #[test]
    fn a_pin_mismatch_is_only_this_sides_refusal() {
        let fp = Fingerprint([9; 32]);
        let alert =
            quinn::TransportErrorCode::crypto(u8::from(rustls::AlertDescription::HandshakeFailure));
        let reason = format!("unexpected error: {}", pin_mismatch_reason(&fp));
        let local = |code, reason: &str| {
            quinn::ConnectionError::TransportError(quinn_proto::TransportError {
                code,
                frame: None,
                reason: reason.to_owned(),
            })
        };
        assert_eq!(pin_mismatch(&local(alert, &reason)), Some(fp));
        assert!(matches!(
            NetError::from_connection(local(alert, &reason)),
            NetError::PinMismatch { presented } if presented == fp
        ));
        let other_alert =
            quinn::TransportErrorCode::crypto(u8::from(rustls::AlertDescription::DecryptError));
        assert_eq!(pin_mismatch(&local(other_alert, &reason)), None);
        assert_eq!(pin_mismatch(&local(alert, "unexpected error: no")), None);
        assert_eq!(
            pin_mismatch(&local(
                alert,
                "relay certificate 12 does not match the pinned fingerprint"
            )),
            None
        );
        let peer = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: alert,
            frame_type: None,
            reason: bytes::Bytes::from(reason.clone()),
        });
        assert_eq!(pin_mismatch(&peer), None);
        assert!(matches!(
            NetError::from_connection(peer),
            NetError::Connection(_)
        ));
        assert_eq!(pin_mismatch(&quinn::ConnectionError::TimedOut), None);
    }
}
