//! Events the node announces: to `/v1/events` subscribers, to hooks, and to the log.

use serde::Serialize;

use hotline_proto::{Kind, MessageId, ParticipantId, Precedence, Status};

/// Something an operator may want to know at once.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A new message arrived (stored durably, delivered receipt sent).
    MessageReceived {
        /// Message id.
        id: MessageId,
        /// Sender.
        from: ParticipantId,
        /// Kind.
        kind: Kind,
        /// Precedence.
        precedence: Precedence,
        /// Actual, exercise or test — always shown.
        status: Status,
        /// Subject.
        subject: String,
        /// Respond-by, if any.
        respond_by_ms: Option<u64>,
        /// The messages it answers, updates or cancels (a reply's: the message replied to).
        references: Vec<MessageId>,
        /// Whether this is a repeated page for an unacknowledged message.
        repage: bool,
        /// Whether the message was stored before the node last stopped, unannounced: the
        /// operator may or may not have been told of it already.
        recovered: bool,
    },
    /// A relay accepted one of our messages.
    Accepted {
        /// Message id.
        id: MessageId,
        /// Relay index in the configuration.
        relay: usize,
        /// Actual, exercise or test, as for [`Event::MessageReceived`], so that news of a
        /// drill's message is never taken for actual traffic (`None` only if the stored
        /// message does not decode).
        status: Option<Status>,
        /// Recipients after routing.
        recipients: Vec<ParticipantId>,
    },
    /// A relay refused one of our messages.
    Rejected {
        /// Message id.
        id: MessageId,
        /// Relay index.
        relay: usize,
        /// Actual, exercise or test, as for [`Event::MessageReceived`] (`None` if this node
        /// holds no such message, or it does not decode).
        status: Option<Status>,
        /// Reason code.
        code: String,
        /// Detail.
        detail: String,
        /// Whether the node will retry.
        retrying: bool,
    },
    /// A recipient's node holds one of our messages.
    Delivered {
        /// Message id.
        id: MessageId,
        /// Recipient.
        by: ParticipantId,
        /// Actual, exercise or test, as for [`Event::MessageReceived`], so that news of a
        /// drill's message is never taken for actual traffic (`None` only if the stored
        /// message does not decode).
        status: Option<Status>,
    },
    /// A recipient acknowledged one of our messages.
    Acknowledged {
        /// Message id.
        id: MessageId,
        /// Recipient.
        by: ParticipantId,
        /// Actual, exercise or test, as for [`Event::MessageReceived`], so that news of a
        /// drill's message is never taken for actual traffic (`None` only if the stored
        /// message does not decode).
        status: Option<Status>,
        /// Officer.
        officer: String,
        /// Note.
        note: Option<String>,
    },
    /// The operator here acknowledged a received message.
    AckSent {
        /// Message id.
        id: MessageId,
        /// Actual, exercise or test, as for [`Event::MessageReceived`].
        status: Status,
        /// Officer.
        officer: String,
    },
    /// Recipients have not acknowledged by the respond-by time.
    Overdue {
        /// Message id.
        id: MessageId,
        /// Subject.
        subject: String,
        /// Actual, exercise or test, as for [`Event::MessageReceived`], so that the
        /// escalation of a drill is never taken for actual traffic (`None` only if the
        /// stored message does not decode).
        status: Option<Status>,
        /// Recipients that have not acknowledged.
        recipients: Vec<ParticipantId>,
        /// Whether the escalation was made before the node last stopped and not known to be
        /// announced (its `on_overdue` hook had not ended): the operator may or may not
        /// have been told of it already.
        recovered: bool,
    },
    /// A relay link came up.
    RelayUp {
        /// Relay index.
        relay: usize,
        /// Address.
        address: String,
    },
    /// A relay link went down.
    RelayDown {
        /// Relay index.
        relay: usize,
        /// Why.
        error: String,
    },
    /// No relay has been reachable for a while.
    Unreachable {
        /// For how long, ms.
        for_ms: u64,
    },
    /// A newer roster was installed.
    RosterChanged {
        /// Its version.
        version: u64,
    },
}

/// A message's status as a log line's `status` field shows it, as the arrival's line does
/// (`Exercise`), or `unknown` for a stored message that does not decode: the line telling of
/// a drill's message must not read as one of actual traffic.
pub(crate) fn status_logged(status: Option<Status>) -> String {
    status.map_or_else(|| "unknown".to_owned(), |s| format!("{s:?}"))
}
