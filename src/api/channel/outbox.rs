//! A stream's outbox: the bounded queue of events between whoever makes them (the
//! stream's task, the registry under an organization's lock, the waiting acquires) and
//! the response stream tonic writes. A push never waits: when the client does not read
//! and the outbox is full, the stream is closed with RESOURCE_EXHAUSTED (its leases stay
//! live for their TTL, to be attached by a new stream).
//!
//! [`EventStream`] drains the outbox into `ChannelResponse`s of up to
//! `limits::CHANNEL_EVENTS_PER_MESSAGE_MAX` events, and ends with the close status once
//! every event pushed before the close was written.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;

use crate::limits;
use crate::proto::{ChannelResponse, StreamEvent};

/// The sending side, shared by everything that tells the stream's engine something.
#[derive(Clone)]
pub struct Outbox {
    events: mpsc::Sender<StreamEvent>,
    closing: Arc<Closing>,
}

#[derive(Default)]
struct Closing {
    /// The status the stream ends with, until the response stream takes it (`Ok`
    /// ends it cleanly).
    status: Mutex<Option<Result<(), Status>>>,
    /// Set by the first close, for good; its waiters are woken.
    closed: std::sync::atomic::AtomicBool,
    woken: tokio::sync::Notify,
}

impl Outbox {
    /// An outbox and the response stream that drains it.
    pub fn new() -> (Outbox, EventStream) {
        let (events, receiver) = mpsc::channel(limits::STREAM_OUTBOX_EVENTS_MAX);
        let closing = Arc::new(Closing::default());
        let outbox = Outbox {
            events,
            closing: Arc::clone(&closing),
        };
        let stream = EventStream {
            events: receiver,
            closing,
            done: false,
        };
        (outbox, stream)
    }

    /// Queues an event; when the client has left the outbox full, closes the stream
    /// with RESOURCE_EXHAUSTED instead (the event is dropped with the stream).
    pub fn push(&self, event: StreamEvent) {
        match self.events.try_send(event) {
            Ok(()) => super::metrics::event_sent(),
            Err(mpsc::error::TrySendError::Full(_)) => self.close(Err(Status::resource_exhausted(
                format!(
                    "the client read none of the last {} events of this stream; it was closed, and its leases stay live until their deadline: open a new stream and attach them",
                    limits::STREAM_OUTBOX_EVENTS_MAX
                ),
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Ends the stream with `status` once the events pushed before are written. The
    /// first close wins.
    pub fn close(&self, status: Result<(), Status>) {
        {
            let mut closing = self.closing.status.lock();
            if self.is_closed() {
                return;
            }
            *closing = Some(status);
            self.closing
                .closed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.closing.woken.notify_waiters();
        // Wakes a response stream waiting on an empty outbox (an event-less wake-up,
        // never written). A full outbox needs none: its reader is not waiting.
        let _ = self.events.try_send(StreamEvent { event: None });
    }

    /// Whether the stream was closed (by overflow, drain or revocation).
    pub fn is_closed(&self) -> bool {
        self.closing
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the stream is closed.
    pub async fn closed(&self) {
        loop {
            let woken = self.closing.woken.notified();
            if self.is_closed() {
                return;
            }
            woken.await;
        }
    }
}

/// The response stream of one `Channel` call.
pub struct EventStream {
    events: mpsc::Receiver<StreamEvent>,
    closing: Arc<Closing>,
    done: bool,
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<ChannelResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // Everything queued goes into one message (up to its bound), taken from the
        // channel at once: the events of a batch of operations, or of a commit group's
        // grants, are one message, encoded and written together.
        let queued = self.events.len();
        let mut batch = Vec::with_capacity(queued.clamp(1, limits::CHANNEL_EVENTS_PER_MESSAGE_MAX));
        let mut senders_gone = false;
        while batch.len() < limits::CHANNEL_EVENTS_PER_MESSAGE_MAX {
            let room = limits::CHANNEL_EVENTS_PER_MESSAGE_MAX - batch.len();
            match self.events.poll_recv_many(cx, &mut batch, room) {
                Poll::Ready(0) => {
                    senders_gone = true;
                    break;
                }
                Poll::Ready(_) => {}
                Poll::Pending => break,
            }
        }
        // The close's wake-ups carry no event.
        batch.retain(|event| event.event.is_some());
        if !batch.is_empty() {
            return Poll::Ready(Some(Ok(ChannelResponse { events: batch })));
        }
        let closed_with = self.closing.status.lock().take();
        if let Some(status) = closed_with {
            self.done = true;
            return Poll::Ready(status.err().map(Err));
        }
        if senders_gone {
            self.done = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
