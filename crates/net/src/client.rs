//! The node side of a session: connect, open the session stream, authenticate.

use std::net::SocketAddr;
use std::time::Duration;

use hotline_proto::auth::{AuthProof, EXPORTER_LABEL};
use hotline_proto::frame::{Hello, NodeToRelay, RelayToNode, Welcome};
use hotline_proto::limits::CHANNEL_BINDING_BYTES;
use hotline_proto::{ParticipantId, Signed, SigningKey, PROTOCOL_VERSION};

use crate::tls::RELAY_SERVER_NAME;
use crate::{FrameReader, FrameWriter, NetError};

/// An authenticated session: the connection and its one stream.
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Frames from the relay.
    pub reader: FrameReader,
    /// Frames to the relay.
    pub writer: FrameWriter,
    /// The relay's welcome.
    pub welcome: Welcome,
}

/// The 32 bytes of TLS exporter keying material that bind an authentication proof to this
/// connection (label `EXPORTER-cica-hotline-auth`, empty context).
pub fn channel_binding(conn: &quinn::Connection) -> Result<[u8; CHANNEL_BINDING_BYTES], NetError> {
    let mut out = [0u8; CHANNEL_BINDING_BYTES];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Tls("cannot export keying material".into()))?;
    Ok(out)
}

/// Opens a QUIC connection to a relay, within `timeout`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, NetError> {
    let connecting = endpoint.connect(addr, RELAY_SERVER_NAME)?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(NetError::from_connection(e)),
        Err(_) => Err(NetError::Timeout("QUIC handshake")),
    }
}

/// Opens the session stream, sends `Hello` with a proof bound to this connection, and waits
/// for `Welcome` (or the relay's error) within `timeout`.
pub async fn authenticate(
    conn: quinn::Connection,
    participant: &ParticipantId,
    key: &SigningKey,
    roster_version: u64,
    now_ms: u64,
    timeout: Duration,
) -> Result<Session, NetError> {
    let proof = AuthProof {
        version: PROTOCOL_VERSION,
        participant: participant.clone(),
        channel_binding: channel_binding(&conn)?,
        created_at_ms: now_ms,
    };
    let auth = Signed::sign(&proof, key)?;
    let fut = async {
        let (send, recv) = conn.open_bi().await.map_err(NetError::from_connection)?;
        let mut writer = FrameWriter::new(send);
        let mut reader = FrameReader::new(recv);
        writer
            .write(&NodeToRelay::Hello(Hello {
                auth,
                roster_version,
            }))
            .await?;
        match reader.read::<RelayToNode>().await {
            Ok(Some(RelayToNode::Welcome(welcome))) => Ok(Session {
                conn: conn.clone(),
                reader,
                writer,
                welcome,
            }),
            Ok(Some(RelayToNode::Error(e))) => Err(NetError::closed_by_peer(e.code, &e.detail)),
            Ok(Some(other)) => Err(NetError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
            Ok(None) => Err(NetError::Protocol("relay closed the stream".into())),
            Err(e) => Err(prefer_close_reason(&conn, e)),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout("authentication")),
    }
}

/// If the connection was closed with a hotline code, report that rather than a read error.
fn prefer_close_reason(conn: &quinn::Connection, e: NetError) -> NetError {
    match conn.close_reason() {
        Some(c) => NetError::from_connection(c),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use hotline_proto::frame::{ErrorCode, ErrorFrame, NodeToRelay, RelayToNode};
    use hotline_proto::{ParticipantId, SigningKey};

    use crate::tls::{write_self_signed, RelayIdentity};
    use crate::transport::{client_endpoint, server_endpoint, TransportLimits};
    use crate::{FrameReader, FrameWriter, NetError};

    /// The detail of a relay's `Error` frame reaches the node's logs, events and operator as
    /// the refusal's reason: it is escaped as a close reason is, so that it cannot forge a
    /// log line, drive a terminal or reorder what is shown.
    #[tokio::test]
    async fn an_error_frames_detail_cannot_forge_a_log_line() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let fp = write_self_signed(&cert, &key).unwrap();
        let identity = RelayIdentity::load(&cert, &key).unwrap();
        let limits = TransportLimits::default();
        let local = "127.0.0.1:0".parse().unwrap();
        let server = server_endpoint(local, &identity, &limits).unwrap();
        let addr = server.local_addr().unwrap();
        let relay = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (send, recv) = conn.accept_bi().await.unwrap();
            let mut reader = FrameReader::new(recv);
            let mut writer = FrameWriter::new(send);
            let first = reader.read::<NodeToRelay>().await.unwrap();
            assert!(matches!(first, Some(NodeToRelay::Hello(_))), "{first:?}");
            writer
                .write(&RelayToNode::Error(ErrorFrame {
                    code: ErrorCode::AuthFailed,
                    detail: "no\n2026-12-05T00:00:00Z  INFO link up\u{1b}[2J \u{202e}ko".into(),
                }))
                .await
                .unwrap();
            writer.finish();
            conn.closed().await;
        });

        let node = client_endpoint(local, vec![fp], &limits).unwrap();
        let conn = crate::connect(&node, addr, Duration::from_secs(10))
            .await
            .unwrap();
        let me = ParticipantId::new("KAZ").unwrap();
        let key = SigningKey::from_bytes(&[5; 32]);
        let r = crate::authenticate(conn.clone(), &me, &key, 0, 1, Duration::from_secs(10)).await;
        match r {
            Err(NetError::Closed { code, reason }) => {
                assert_eq!(code, ErrorCode::AuthFailed);
                assert_eq!(
                    reason,
                    "no\\n2026-12-05T00:00:00Z  INFO link up\\u{1b}[2J \\u{202e}ko"
                );
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("authenticated by an Error frame"),
        }
        conn.close(0u32.into(), b"done");
        relay.await.unwrap();
    }
}
