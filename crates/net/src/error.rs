//! Transport errors.

use hotline_proto::frame::ErrorCode;
use hotline_proto::{DecodeError, EncodeError};

use crate::Fingerprint;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A certificate, key or TLS configuration problem.
    #[error("TLS: {0}")]
    Tls(String),
    /// A certificate or key file could not be read: missing, unreadable, not text, or
    /// larger than any such file (the message names the file).
    #[error("TLS: {0}")]
    TlsFile(#[from] hotline_config::TextFileError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The endpoint could not be created (e.g. the address is in use).
    #[error("endpoint: {0}")]
    Endpoint(std::io::Error),
    /// A connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// This node refused the relay in the TLS handshake: the certificate it presented is
    /// not the one pinned for it (a wrong fingerprint in the configuration, a certificate
    /// rotated on the relay, or something else answering at its address). It lasts until
    /// the configuration or the relay's certificate changes.
    #[error("TLS: relay certificate {presented} does not match the pinned fingerprint")]
    PinMismatch {
        /// The fingerprint of the certificate the relay presented.
        presented: Fingerprint,
    },
    /// The peer closed the connection with a hotline error code.
    #[error("closed by peer: {code:?}: {reason}")]
    Closed {
        /// The code.
        code: ErrorCode,
        /// The peer's reason text.
        reason: String,
    },
    /// Reading from the stream failed.
    #[error("read: {0}")]
    Read(String),
    /// Writing to the stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// A frame could not be decoded.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// The peer did not answer in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A write made no progress for `stall_ms`: the peer read none of what was sent for
    /// that long (it stopped reading). A peer that reads slowly but steadily, as over a poor
    /// link, is not this.
    #[error("the peer read nothing for {stall_ms} ms")]
    Stalled {
        /// How long the write waited without progress.
        stall_ms: u64,
    },
    /// The peer broke the protocol (e.g. an unexpected first frame).
    #[error("protocol: {0}")]
    Protocol(String),
    /// This side cannot go on with the connection (its store failed); the peer did nothing
    /// wrong.
    #[error("{0}")]
    Local(String),
}

impl NetError {
    /// The code to close the connection with when this error ends it: `FrameTooLarge` for a
    /// frame over the limit, `SlowConsumer` for a peer that stopped reading, `ProtocolViolation` for anything else the peer sent or did
    /// wrong, `Internal` for this side's own failure, and `Normal` when the connection has
    /// already ended (closing it again changes nothing).
    pub fn close_code(&self) -> ErrorCode {
        match self {
            NetError::Decode(DecodeError::TooLarge { .. }) => ErrorCode::FrameTooLarge,
            NetError::Closed { .. } | NetError::Connection(_) | NetError::PinMismatch { .. } => {
                ErrorCode::Normal
            }
            NetError::Local(_) => ErrorCode::Internal,
            NetError::Stalled { .. } => ErrorCode::SlowConsumer,
            _ => ErrorCode::ProtocolViolation,
        }
    }

    /// The peer's `Error` frame (or close) with `code` and its free-text `detail`, made safe
    /// to log and show as a close reason is (control characters and bidirectional
    /// overrides escaped): the relay's detail reaches logs, events and the operator's
    /// screen.
    pub fn closed_by_peer(code: ErrorCode, detail: &str) -> Self {
        NetError::Closed {
            code,
            reason: peer_text(detail.as_bytes()),
        }
    }

    /// Maps a connection error to `Closed` when the peer gave a hotline code, and to
    /// `PinMismatch` when this side refused the peer's certificate.
    pub fn from_connection(e: quinn::ConnectionError) -> Self {
        if let Some(presented) = crate::tls::pin_mismatch(&e) {
            return NetError::PinMismatch { presented };
        }
        if let quinn::ConnectionError::ApplicationClosed(close) = &e {
            if let Some(code) = ErrorCode::from_close_code(close.error_code.into_inner()) {
                return NetError::Closed {
                    code,
                    reason: peer_text(&close.reason),
                };
            }
        }
        NetError::Connection(e)
    }
}

/// A peer's free text (a close reason, an `Error` frame's detail), made safe to log and
/// show: control characters (line breaks, terminal escapes) and the bidirectional embedding,
/// override and isolate characters (which reorder the text after them on screen) are written
/// as escapes, so that a peer cannot forge log lines, drive the operator's terminal or
/// disguise what it says.
fn peer_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_close_reason_cannot_forge_a_log_line() {
        let close = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: ErrorCode::Revoked.close_code().into(),
            reason: bytes::Bytes::from_static(
                b"revoked\n2026-12-05T00:00:00Z  INFO relay ok\x1b[2J \xe2\x9c\x93 \xe2\x80\xaeko",
            ),
        });
        match NetError::from_connection(close) {
            NetError::Closed { code, reason } => {
                assert_eq!(code, ErrorCode::Revoked);
                assert_eq!(
                    reason,
                    "revoked\\n2026-12-05T00:00:00Z  INFO relay ok\\u{1b}[2J \u{2713} \\u{202e}ko"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
