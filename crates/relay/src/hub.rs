//! The registry of live, authenticated sessions: one per participant.
//!
//! The store writer wakes a participant's session after a commit that queued something for
//! it; a second connection for the same participant supersedes the first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hotline_proto::frame::ErrorCode;
use hotline_proto::ParticipantId;
use tokio::sync::Notify;

struct Entry {
    conn_id: u64,
    conn: quinn::Connection,
    wake: Arc<Notify>,
}

/// Live sessions by participant.
#[derive(Default)]
pub(crate) struct Hub {
    sessions: Mutex<HashMap<ParticipantId, Entry>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, Entry>> {
        // Nothing panics while holding this lock; recover the map if something did.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; closes an earlier one of the same participant as superseded.
    pub(crate) fn register(
        &self,
        participant: &ParticipantId,
        conn_id: u64,
        conn: quinn::Connection,
    ) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        let old = self.lock().insert(
            participant.clone(),
            Entry {
                conn_id,
                conn,
                wake: wake.clone(),
            },
        );
        if let Some(old) = old {
            tracing::info!(peer = %participant, old = old.conn_id, new = conn_id, "session superseded");
            old.conn.close(
                ErrorCode::Superseded.close_code().into(),
                b"another connection authenticated as this participant",
            );
        }
        wake
    }

    /// Removes a session if it is still the registered one.
    pub(crate) fn unregister(&self, participant: &ParticipantId, conn_id: u64) {
        let mut map = self.lock();
        if map.get(participant).is_some_and(|e| e.conn_id == conn_id) {
            map.remove(participant);
        }
    }

    /// Tells a participant's session that something was queued for it.
    pub(crate) fn wake(&self, participant: &ParticipantId) {
        if let Some(e) = self.lock().get(participant) {
            e.wake.notify_one();
        }
    }

    /// Participants with a live session.
    pub(crate) fn connected(&self) -> Vec<ParticipantId> {
        let mut v: Vec<_> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }
}
