//! Frames on a QUIC stream: a reader that checks the length before allocating, a writer.

use std::time::Duration;

use hotline_proto::frame::{self, FrameBuffer, FrameCheck};

use crate::NetError;

/// Most bytes taken from QUIC in one read; a chunk is at most one packet's data anyway.
const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// A buffer grown beyond this for a large frame is given back once it is empty.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// Reads length-prefixed frames from a receive stream.
///
/// Bytes are taken from QUIC as they arrive and split into frames by the sans-I/O
/// [`FrameBuffer`], which refuses an oversized length prefix as soon as it is complete, so
/// what a peer can make it hold is bounded by the frame limit and QUIC flow control.
/// [`FrameReader::read`] is **cancel-safe**: everything read so far is kept in the reader, so a
/// `select!` may drop a pending call at any point and call again later without losing bytes.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: FrameBuffer,
}

impl FrameReader {
    /// Wraps a receive stream.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            buf: FrameBuffer::new(),
        }
    }

    /// Reads the next frame; `Ok(None)` when the peer finished the stream cleanly between
    /// frames. Cancel-safe (see the type's documentation).
    pub async fn read<T: bincode::Decode<()> + FrameCheck>(
        &mut self,
    ) -> Result<Option<T>, NetError> {
        Ok(self.read_sized().await?.map(|(frame, _)| frame))
    }

    /// The next frame if one has already arrived, without waiting: frames buffered here,
    /// then whatever QUIC already holds for this stream. `Ok(None)` when nothing complete
    /// has arrived (or the stream has ended: the next [`FrameReader::read`] says so).
    pub fn try_read<T: bincode::Decode<()> + FrameCheck>(&mut self) -> Result<Option<T>, NetError> {
        use std::future::Future as _;
        use std::task::{Context, Poll, Waker};
        loop {
            if let Some(frame) = self.take()? {
                return Ok(Some(frame));
            }
            // One poll with a waker that does nothing: a pending read registers no interest
            // that matters, and the caller's next `read` registers its own waker again.
            let mut cx = Context::from_waker(Waker::noop());
            let polled = std::pin::pin!(self.recv.read_chunk(CHUNK_BYTES_MAX, true)).poll(&mut cx);
            match polled {
                Poll::Pending | Poll::Ready(Ok(None)) => return Ok(None),
                Poll::Ready(Ok(Some(chunk))) => {
                    self.buf.push(&chunk.bytes)?;
                }
                Poll::Ready(Err(e)) => return Err(read_error(e)),
            }
        }
    }

    /// Refuses, from the next frame on, a length prefix over `max` (at most the frame
    /// limit, the default), as soon as the prefix has arrived: see
    /// [`FrameBuffer::set_frame_bytes_max`]. The relay reads a session's first frame, the
    /// `Hello`, under [`hotline_proto::limits::HELLO_FRAME_BYTES_MAX`].
    pub fn set_frame_bytes_max(&mut self, max: usize) {
        self.buf.set_frame_bytes_max(max);
    }

    /// The next frame, with its size on the wire (length prefix included): what
    /// [`spawn_reader`] counts against its byte budget. [`FrameReader::read`] without the
    /// size; cancel-safe as it is.
    async fn read_sized<T: bincode::Decode<()> + FrameCheck>(
        &mut self,
    ) -> Result<Option<(T, usize)>, NetError> {
        loop {
            if let Some(frame) = self.take_sized()? {
                return Ok(Some(frame));
            }
            // quinn's `read_chunk` is cancel-safe: data is only taken when it is returned.
            let chunk = self
                .recv
                .read_chunk(CHUNK_BYTES_MAX, true)
                .await
                .map_err(read_error)?;
            if !self.pushed(chunk)? {
                return Ok(None);
            }
        }
    }

    /// A complete buffered frame, if any; a large emptied buffer is given back.
    fn take<T: bincode::Decode<()> + FrameCheck>(&mut self) -> Result<Option<T>, NetError> {
        Ok(self.take_sized()?.map(|(f, _)| f))
    }

    /// As `take`, with the frame's size on the wire.
    fn take_sized<T: bincode::Decode<()> + FrameCheck>(
        &mut self,
    ) -> Result<Option<(T, usize)>, NetError> {
        let before = self.buf.pending_bytes();
        let frame = self.buf.next_frame()?;
        let size = before - self.buf.pending_bytes();
        if self.buf.pending_bytes() == 0 && self.buf.capacity() > KEEP_BUFFER_BYTES {
            let max = self.buf.frame_bytes_max();
            self.buf = FrameBuffer::new();
            self.buf.set_frame_bytes_max(max);
        }
        Ok(frame.map(|f| (f, size)))
    }

    /// Buffers a chunk; false at a clean end of stream (nothing partial left over).
    fn pushed(&mut self, chunk: Option<quinn::Chunk>) -> Result<bool, NetError> {
        match chunk {
            Some(c) => {
                self.buf.push(&c.bytes)?;
                Ok(true)
            }
            None if self.buf.pending_bytes() == 0 => Ok(false),
            None => Err(NetError::Decode(hotline_proto::DecodeError::Truncated)),
        }
    }
}

fn read_error(e: quinn::ReadError) -> NetError {
    match e {
        quinn::ReadError::ConnectionLost(c) => NetError::from_connection(c),
        other => NetError::Read(other.to_string()),
    }
}

/// A failed write: a lost connection is reported as the connection's own error, as a failed
/// read's is ([`NetError::from_connection`]), so that a peer's close code is seen (a relay
/// that closed with `Revoked` while this side wrote) and a connection that timed out is not
/// taken for a broken stream.
fn write_error(e: quinn::WriteError) -> NetError {
    match e {
        quinn::WriteError::ConnectionLost(c) => NetError::from_connection(c),
        other => NetError::Write(other),
    }
}

fn stalled(stall: Duration) -> NetError {
    NetError::Stalled {
        stall_ms: u64::try_from(stall.as_millis()).unwrap_or(u64::MAX),
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
        self.send.write_all(&bytes).await.map_err(write_error)?;
        Ok(())
    }

    /// Writes already encoded frames (prefix included), e.g. a batch built in one buffer.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.send.write_all(bytes).await.map_err(write_error)?;
        Ok(())
    }

    /// Writes a prefix of `bytes`, as much as QUIC takes once it takes any; its length.
    /// **Cancel-safe** (quinn's `SendStream::write`): dropped before it resolves, it wrote
    /// nothing, so a `select!` can write a queue beside reading (the node's link does).
    pub async fn write_some(&mut self, bytes: &[u8]) -> Result<usize, NetError> {
        self.send.write(bytes).await.map_err(write_error)
    }

    /// As [`FrameWriter::write_raw`], failing with [`NetError::Stalled`] when QUIC takes
    /// none of the bytes for `stall`. The limit is on progress, not on the whole write: a
    /// write can be megabytes (a page of a backlog), which a peer behind a slow link reads
    /// steadily for far longer than any fixed limit on the whole, and only the peer's
    /// reading lets QUIC take more (its flow-control window).
    pub async fn write_raw_steady(
        &mut self,
        mut bytes: &[u8],
        stall: Duration,
    ) -> Result<(), NetError> {
        while !bytes.is_empty() {
            let n = tokio::time::timeout(stall, self.send.write(bytes))
                .await
                .map_err(|_| stalled(stall))?
                .map_err(write_error)?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Writes already encoded frames held in shared buffers (e.g. one message's delivery
    /// frame, shared by all its recipients' sessions): QUIC keeps the buffers instead of
    /// copying them into its own. With [`FrameWriter::write_raw_steady`]'s limit on progress.
    pub async fn write_chunks_steady(
        &mut self,
        mut chunks: &mut [bytes::Bytes],
        stall: Duration,
    ) -> Result<(), NetError> {
        loop {
            // quinn advances a chunk it wrote in part, and counts only those written whole.
            let done = chunks.iter().take_while(|c| c.is_empty()).count();
            chunks = &mut chunks[done..];
            if chunks.is_empty() {
                return Ok(());
            }
            let written = tokio::time::timeout(stall, self.send.write_chunks(chunks))
                .await
                .map_err(|_| stalled(stall))?
                .map_err(write_error)?;
            chunks = &mut chunks[written.chunks..];
        }
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

/// Reads frames in their own task and passes them on through a bounded channel, so that a
/// loop can take whatever has arrived in one batch. The channel holds at most `capacity`
/// frames and at most `bytes_max` bytes of them (their size on the wire): frames may be up
/// to [`hotline_proto::limits::FRAME_BYTES_MAX`] (256 KiB) each, so a bound in frames alone
/// let a peer padding its frames fill it with `capacity` times that. A full channel stops
/// the reading, which passes backpressure on to QUIC flow control; besides what the channel
/// holds, the reader holds at most the frame it waits to pass on and one read of the next.
/// A frame larger than `bytes_max` waits for the channel to be empty. The channel closes
/// after a clean end of stream; an error is passed on as the last item. (The relay's
/// sessions read in their `select!` directly instead: [`FrameReader::read`] is cancel-safe.)
pub fn spawn_reader<T>(
    mut reader: FrameReader,
    capacity: usize,
    bytes_max: usize,
) -> (FrameReceiver<T>, ReaderTask)
where
    T: bincode::Decode<()> + FrameCheck + Send + 'static,
{
    // At most `u32::MAX` permits may be taken at once; a frame is far below that.
    let bytes_max = bytes_max.clamp(1, u32::MAX as usize);
    let budget = std::sync::Arc::new(Budget {
        room: std::sync::Arc::new(tokio::sync::Semaphore::new(bytes_max)),
        bytes_max,
        held: std::sync::atomic::AtomicBool::new(false),
    });
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let shared = budget.clone();
    let task = tokio::spawn(async move {
        loop {
            let item = match reader.read_sized::<T>().await {
                Ok(Some((f, size))) => {
                    // As many permits as the frame's bytes (all of them for one larger than
                    // the budget), released when the receiver takes the frame.
                    let n = size.clamp(1, shared.bytes_max) as u32;
                    let permit = match shared.room.clone().try_acquire_many_owned(n) {
                        Ok(p) => p,
                        Err(_) => {
                            shared
                                .held
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                            let p = shared.room.clone().acquire_many_owned(n).await;
                            shared
                                .held
                                .store(false, std::sync::atomic::Ordering::Relaxed);
                            // The semaphore is never closed.
                            let Ok(p) = p else { break };
                            p
                        }
                    };
                    Ok((f, permit))
                }
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let last = item.is_err();
            if tx.capacity() == 0 {
                shared
                    .held
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let sent = tx.send(item).await;
            shared
                .held
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if sent.is_err() || last {
                break;
            }
        }
    });
    (FrameReceiver { rx, budget }, ReaderTask(task))
}

/// The byte budget of a [`spawn_reader`] channel, shared by its reader and receiver.
struct Budget {
    /// A permit a byte of the frames in the channel.
    room: std::sync::Arc<tokio::sync::Semaphore>,
    bytes_max: usize,
    /// Whether the reader holds a frame it waits for room to pass on.
    held: std::sync::atomic::AtomicBool,
}

/// The receiving end of a [`spawn_reader`] channel: a frame's bytes are given back to the
/// budget as it is taken.
pub struct FrameReceiver<T> {
    rx: tokio::sync::mpsc::Receiver<Result<(T, tokio::sync::OwnedSemaphorePermit), NetError>>,
    budget: std::sync::Arc<Budget>,
}

impl<T> FrameReceiver<T> {
    /// The next frame, or the reader's failure; `None` once the channel has closed.
    /// Cancel-safe, as `mpsc::Receiver::recv` is.
    pub async fn recv(&mut self) -> Option<Result<T, NetError>> {
        Some(self.rx.recv().await?.map(|(f, _permit)| f))
    }

    /// The next frame if one is waiting, without waiting.
    pub fn try_recv(
        &mut self,
    ) -> Result<Result<T, NetError>, tokio::sync::mpsc::error::TryRecvError> {
        Ok(self.rx.try_recv()?.map(|(f, _permit)| f))
    }

    /// Bytes (on the wire) of the frames waiting in the channel; at most its `bytes_max`.
    pub fn buffered_bytes(&self) -> usize {
        self.budget.bytes_max - self.budget.room.available_permits()
    }

    /// Whether the reader holds a frame it waits for room in the channel to pass on: the
    /// channel is full, in frames or bytes, and the peer is held back.
    pub fn reader_held(&self) -> bool {
        self.budget.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use hotline_proto::frame::{encode_frame, NodeToRelay};

    use super::FrameReader;
    use crate::tls::{write_self_signed, RelayIdentity};
    use crate::transport::{client_endpoint, server_endpoint, TransportLimits};

    #[tokio::test]
    async fn a_read_cancelled_mid_frame_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("hotline-net-reader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
        let fp = write_self_signed(&cert, &key).unwrap();
        let identity = RelayIdentity::load(&cert, &key).unwrap();
        let limits = TransportLimits::default();
        let local = "127.0.0.1:0".parse().unwrap();
        let server = server_endpoint(local, &identity, &limits).unwrap();
        let addr = server.local_addr().unwrap();
        let client = client_endpoint(local, vec![fp], &limits).unwrap();

        // The client sends three bytes of a frame, waits until told, then the rest and a
        // second frame, and finishes the stream.
        let (half_tx, half_rx) = tokio::sync::oneshot::channel();
        let (rest_tx, rest_rx) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let conn = crate::connect(&client, addr, Duration::from_secs(10))
                .await
                .unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            let first = encode_frame(&NodeToRelay::Ping(1)).unwrap();
            let second = encode_frame(&NodeToRelay::Ping(2)).unwrap();
            send.write_all(&first[..3]).await.unwrap();
            half_tx.send(()).unwrap();
            rest_rx.await.unwrap();
            send.write_all(&first[3..]).await.unwrap();
            send.write_all(&second).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
        });

        let conn = server.accept().await.unwrap().await.unwrap();
        let (_send, recv) = conn.accept_bi().await.unwrap();
        let mut reader = FrameReader::new(recv);
        // Cancelled by another branch of a select…
        tokio::select! {
            biased;
            r = reader.read::<NodeToRelay>() => panic!("a whole frame from three bytes: {r:?}"),
            _ = half_rx => {}
        }
        // …and by a timeout, by which time the three bytes are in the reader: the frame
        // cannot complete, so the read is dropped part-way.
        let r =
            tokio::time::timeout(Duration::from_millis(200), reader.read::<NodeToRelay>()).await;
        assert!(r.is_err(), "a whole frame from three bytes: {r:?}");
        rest_tx.send(()).unwrap();

        let next = |r: Result<Option<NodeToRelay>, crate::NetError>| match r {
            Ok(Some(NodeToRelay::Ping(n))) => Some(n),
            Ok(None) => None,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(next(reader.read().await), Some(1));
        assert_eq!(next(reader.read().await), Some(2));
        assert_eq!(next(reader.read().await), None, "a clean end of stream");
        conn.close(0u32.into(), b"done");
        peer.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
