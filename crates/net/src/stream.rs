//! Frames on a QUIC stream: a reader that checks the length before allocating, a writer.

use hotline_proto::frame::{self, FrameCheck, FRAME_PREFIX_BYTES};

use crate::NetError;

/// Reads length-prefixed frames from a receive stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl FrameReader {
    /// Wraps a receive stream.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            buf: Vec::new(),
        }
    }

    /// Reads the next frame; `Ok(None)` when the peer finished the stream cleanly between
    /// frames. The length is checked against the frame limit before the payload is read.
    /// Cancel-safe only between frames: do not drop a pending call mid-frame and reuse the
    /// reader (the session loops run it in a dedicated task or await it to completion).
    pub async fn read<T: bincode::Decode<()> + FrameCheck>(
        &mut self,
    ) -> Result<Option<T>, NetError> {
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        match self.recv.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                return Err(NetError::Decode(hotline_proto::DecodeError::Truncated))
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
        }
        let len = frame::frame_len(prefix)?;
        self.buf.resize(len, 0);
        self.recv
            .read_exact(&mut self.buf)
            .await
            .map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => {
                    NetError::Decode(hotline_proto::DecodeError::Truncated)
                }
                quinn::ReadExactError::ReadError(e) => read_error(e),
            })?;
        let value = frame::decode_frame(&self.buf)?;
        // Keep a small buffer between frames; a large one is given back.
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        Ok(Some(value))
    }
}

fn read_error(e: quinn::ReadError) -> NetError {
    match e {
        quinn::ReadError::ConnectionLost(c) => NetError::from_connection(c),
        other => NetError::Read(other.to_string()),
    }
}

/// Writes length-prefixed frames to a send stream.
pub struct FrameWriter {
    send: quinn::SendStream,
}

impl FrameWriter {
    /// Wraps a send stream.
    pub fn new(send: quinn::SendStream) -> Self {
        Self { send }
    }

    /// Encodes and writes one frame.
    pub async fn write<T: bincode::Encode + FrameCheck>(&mut self, f: &T) -> Result<(), NetError> {
        let bytes = frame::encode_frame(f)?;
        self.send.write_all(&bytes).await?;
        Ok(())
    }

    /// Writes already encoded frames (prefix included), e.g. a batch built in one buffer.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Finishes the stream (no more frames).
    pub fn finish(&mut self) {
        // Finishing an already closed stream is harmless.
        let _ = self.send.finish();
    }
}

/// A frame-reading task, aborted when this handle is dropped, so no reader outlives its
/// session.
pub struct ReaderTask(tokio::task::JoinHandle<()>);

impl Drop for ReaderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads frames in their own task and passes them on through a bounded channel of
/// `capacity`. A session's `select!` can then wait on the channel without ever cancelling a
/// half-read frame, and a full channel stops the reading, which passes backpressure on to
/// QUIC flow control. The channel closes after a clean end of stream; an error is passed on
/// as the last item.
pub fn spawn_reader<T>(
    mut reader: FrameReader,
    capacity: usize,
) -> (tokio::sync::mpsc::Receiver<Result<T, NetError>>, ReaderTask)
where
    T: bincode::Decode<()> + FrameCheck + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let task = tokio::spawn(async move {
        loop {
            let item = match reader.read::<T>().await {
                Ok(Some(f)) => Ok(f),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                break;
            }
        }
    });
    (rx, ReaderTask(task))
}
