//! The bounded mailbox of one activation: many senders, one receiver, backpressure.
//!
//! Its interface is the subset of `tokio::sync::mpsc` the runtime uses (`try_send`, a `send`
//! that waits for room, weak senders, `recv`, `close`), with the same semantics, plus
//! [`Receiver::recv_queued`], which tells a message that waited in the queue from one that
//! arrived while the receiver was idle.
//! It exists for memory: a tokio channel allocates a block of 32 slots up front (about a
//! kilobyte per actor with its bookkeeping), while this one is a lock, a queue that allocates
//! only when something is queued, and a [`Notify`] for senders waiting for room. An idle
//! resident actor is mostly its mailbox, so the difference decides how many fit in memory.
//!
//! - A message is accepted while the queue and the receiver's *held* messages together are
//!   fewer than `capacity` and the receiver has not closed it; otherwise `try_send` hands it back as [`TrySendError::Full`] or
//!   [`TrySendError::Closed`], and `send` waits for room (or fails when closed).
//! - The receiver sees every accepted message, in order. After [`Receiver::close`] or once every
//!   strong sender is gone, it still receives what was queued, then `None`.
//! - Dropping the receiver drops what is still queued (reply channels inside close, so askers
//!   are told) and fails every waiting sender.
//! - A sender can close the mailbox behind a last message ([`Sender::close_with`]): the host
//!   passivates an actor this way, so nothing sent after the request lands behind it.
//! - The receiver may take messages out early and still count them against the capacity
//!   ([`Receiver::recv_held`], [`Receiver::hold`]): an activation whose turn waits moves
//!   commands into a queue of its own (to answer them by their deadlines), and those still
//!   wait, so they still take room.
//! - Each mailbox carries its actor's [`LastUse`], stamped by whoever delivers to it (the
//!   registry, or an `ActorRef` that kept a [`WeakSender`]): the resident cap's order.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};

use parking_lot::Mutex;
use tokio::sync::Notify;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Senders waiting for room.
    room: Notify,
    /// Strong senders alive.
    senders: AtomicUsize,
    /// The actor's last use.
    used: LastUse,
    capacity: usize,
}

/// When an actor was last used: its place in the host's order of uses and the host's coarse
/// clock then (idle passivation). Stamped by every delivery, under the mailbox's lock, so a
/// mailbox's stamps only grow (see [`UseClock`]); read without it.
#[derive(Default)]
pub(crate) struct LastUse {
    seq: AtomicU64,
    ms: AtomicU64,
}

impl LastUse {
    /// Records a use: the `seq`-th of the host, at `ms` (for a mailbox nobody else has yet,
    /// or a test; deliveries stamp through [`UseClock`]).
    pub fn touch(&self, seq: u64, ms: u64) {
        self.seq.store(seq, Ordering::Relaxed);
        self.ms.store(ms, Ordering::Relaxed);
    }

    /// The place of the last use in the host's order of uses.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// The coarse clock at the last use.
    pub fn ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
}

/// Where a delivery's stamp comes from: the host's counter of uses and its coarse clock.
/// Both are read under the mailbox's lock, after the message is queued: two deliveries to one
/// mailbox take the lock one after the other, so the second's count is the larger (the
/// counter's increments are totally ordered, and the lock orders the two), and a stamp never
/// goes back.
#[derive(Clone, Copy)]
pub(crate) struct UseClock<'a> {
    /// The host's counter of uses.
    pub uses: &'a AtomicU64,
    /// The host's coarse clock, in milliseconds.
    pub ms: &'a AtomicU64,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Messages the receiver took out and still counts as waiting (see [`Receiver::hold`]).
    /// A `u32` beside the flags: an awake actor is mostly this struct (see B6).
    held: u32,
    closed: bool,
    /// The receiver, waiting for a message.
    receiver: Option<Waker>,
    /// `receiver` is a parked activation's waker (see [`Receiver::park`]).
    parked: bool,
}

impl<T> State<T> {
    /// Messages that wait: queued, or held by the receiver.
    fn waiting(&self) -> usize {
        self.queue.len() + self.held as usize
    }
}

/// Creates a mailbox that holds at most `capacity` messages (at least one).
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            held: 0,
            closed: false,
            receiver: None,
            parked: false,
        }),
        room: Notify::new(),
        senders: AtomicUsize::new(1),
        used: LastUse::default(),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// Why `try_send` handed a message back.
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// The mailbox holds `capacity` messages.
    Full(T),
    /// The receiver closed the mailbox (or is gone).
    Closed(T),
}

/// The mailbox was closed: the message comes back.
#[derive(Debug)]
pub(crate) struct SendError<T>(pub T);

/// Why `try_recv` returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// Nothing queued now.
    Empty,
    /// Nothing queued, and nothing will be: closed, or every sender is gone.
    Disconnected,
}

/// A sending handle; the mailbox stays open for senders while one exists.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A sending handle that does not keep the mailbox connected.
pub(crate) struct WeakSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Shared<T> {
    /// Queues `msg` if the mailbox is open (and, for a weak sender, still connected) and has
    /// room, and stamps the use on `clock` when there is one.
    fn try_push(
        &self,
        msg: T,
        weak: bool,
        clock: Option<UseClock<'_>>,
    ) -> Result<(), TrySendError<T>> {
        self.push_unless(msg, weak, clock, false)
    }

    /// [`Shared::try_push`]; with `not_parked`, a parked receiver counts as closed.
    fn push_unless(
        &self,
        msg: T,
        weak: bool,
        clock: Option<UseClock<'_>>,
        not_parked: bool,
    ) -> Result<(), TrySendError<T>> {
        let mut state = self.state.lock();
        // Checked under the lock: the last strong sender's drop takes it before waking the
        // receiver, so a message queued here is seen before the receiver's `None`.
        if state.closed
            || (weak && self.senders.load(Ordering::Acquire) == 0)
            || (not_parked && state.parked)
        {
            return Err(TrySendError::Closed(msg));
        }
        if state.waiting() >= self.capacity {
            return Err(TrySendError::Full(msg));
        }
        state.queue.push_back(msg);
        if let Some(clock) = clock {
            self.used.touch(
                clock.uses.fetch_add(1, Ordering::Relaxed),
                clock.ms.load(Ordering::Relaxed),
            );
        }
        let receiver = state.receiver.take();
        state.parked = false;
        drop(state);
        if let Some(waker) = receiver {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Shared<T> {
    /// Wakes one more waiting sender if there is still room: a receiver wakes senders only as
    /// it frees slots of a full mailbox, so when it freed several before the first woken
    /// sender came back, the others would wait for a wake-up that never comes.
    fn pass_room_on(&self) {
        let room = {
            let state = self.state.lock();
            !state.closed && state.waiting() < self.capacity
        };
        if room {
            self.room.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `msg` if there is room now.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.shared.try_push(msg, false, None)
    }

    /// [`try_send`](Self::try_send), stamping the actor's [`LastUse`] from `clock` when the
    /// message is queued.
    pub fn try_send_used(&self, msg: T, clock: UseClock<'_>) -> Result<(), TrySendError<T>> {
        self.shared.try_push(msg, false, Some(clock))
    }

    /// Queues `msg` as the last message, full or not, and closes the mailbox: later sends
    /// fail as closed, and the receiver still gets everything queued, `msg` last. Dropped if
    /// the mailbox is closed already.
    pub fn close_with(&self, msg: T) {
        let mut state = self.shared.state.lock();
        if state.closed {
            return;
        }
        state.queue.push_back(msg);
        state.closed = true;
        let receiver = state.receiver.take();
        state.parked = false;
        drop(state);
        if let Some(waker) = receiver {
            waker.wake();
        }
        self.shared.room.notify_waiters();
    }

    /// The actor's last use.
    pub fn last_use(&self) -> &LastUse {
        &self.shared.used
    }

    /// Queues `msg`, waiting for room. Fails only when the mailbox is closed.
    pub async fn send(&self, mut msg: T) -> Result<(), SendError<T>> {
        let mut waited = false;
        loop {
            let room = self.shared.room.notified();
            let mut room = std::pin::pin!(room);
            // Registered before trying, so a message taken out in between wakes us.
            room.as_mut().enable();
            match self.try_send(msg) {
                Ok(()) => {
                    if waited {
                        self.shared.pass_room_on();
                    }
                    return Ok(());
                }
                Err(TrySendError::Closed(m)) => return Err(SendError(m)),
                Err(TrySendError::Full(m)) => msg = m,
            }
            room.await;
            waited = true;
        }
    }

    /// A handle that can send while this mailbox has strong senders, without keeping it so.
    pub fn downgrade(&self) -> WeakSender<T> {
        WeakSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a waiting receiver learns that nothing more will come.
            let receiver = {
                let mut state = self.shared.state.lock();
                state.parked = false;
                state.receiver.take()
            };
            if let Some(waker) = receiver {
                waker.wake();
            }
        }
    }
}

impl<T> WeakSender<T> {
    /// Queues `msg` if there is room now and a strong sender still exists, stamping the
    /// actor's [`LastUse`] from `clock` when it is queued.
    pub fn try_send_used(&self, msg: T, clock: UseClock<'_>) -> Result<(), TrySendError<T>> {
        self.shared.try_push(msg, true, Some(clock))
    }

    /// Queues `msg` without stamping a use (the runtime's own requests, which must not keep
    /// an idle actor looking used), and never to a parked receiver: that counts as closed
    /// (a request to hibernate must not wake a hibernating actor).
    pub fn try_send_quiet(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.shared.push_unless(msg, true, None, true)
    }

    /// The actor's last use.
    pub fn last_use(&self) -> &LastUse {
        &self.shared.used
    }

    /// A strong sender, unless every strong sender is gone.
    pub fn upgrade(&self) -> Option<Sender<T>> {
        self.shared
            .senders
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n + 1)
            })
            .ok()?;
        Some(Sender {
            shared: Arc::clone(&self.shared),
        })
    }
}

impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        WeakSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Receiver<T> {
    /// The next message if one is queued now.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.state.lock();
        self.take(&mut state, false)
    }

    /// Takes the next message out (waking a sender waiting for room, unless it is `held`:
    /// then it still takes its room), or says why there is none.
    #[inline(always)]
    fn take(&self, state: &mut State<T>, held: bool) -> Result<T, TryRecvError> {
        let was_full = state.waiting() >= self.shared.capacity;
        match state.queue.pop_front() {
            Some(msg) if held => {
                state.held = state.held.saturating_add(1);
                Ok(msg)
            }
            Some(msg) => {
                if was_full {
                    // One slot freed: one waiting sender may take it (a cancelled waiter
                    // passes the wake-up on, see `Notify`).
                    self.shared.room.notify_one();
                }
                Ok(msg)
            }
            None if state.closed || self.shared.senders.load(Ordering::Acquire) == 0 => {
                Err(TryRecvError::Disconnected)
            }
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next message; `None` once the mailbox is closed (or every sender is gone) and
    /// everything queued was received.
    #[cfg(test)]
    pub async fn recv(&mut self) -> Option<T> {
        self.recv_queued().await.0
    }

    /// Like [`recv`](Self::recv), and says whether the message was already queued when called
    /// (`false`: it arrived while the receiver waited). One lock when something is queued,
    /// where `try_recv` then `recv` would take two.
    pub async fn recv_queued(&mut self) -> (Option<T>, bool) {
        self.recv_with(false).await
    }

    /// Like [`recv`](Self::recv), but the message keeps its room in the mailbox, as one
    /// *held* by the receiver, until [`hold`](Self::hold) says fewer are.
    pub async fn recv_held(&mut self) -> Option<T> {
        self.recv_with(true).await.0
    }

    /// Says how many messages the receiver holds now (taken out with
    /// [`recv_held`](Self::recv_held) or otherwise, and still waiting to be served): they
    /// count against the capacity. Senders waiting for room get the room this frees.
    pub fn hold(&self, held: usize) {
        let freed = {
            let mut state = self.shared.state.lock();
            let capacity = self.shared.capacity;
            let was_full = state.waiting() >= capacity;
            state.held = u32::try_from(held).unwrap_or(u32::MAX);
            if was_full {
                capacity.saturating_sub(state.waiting())
            } else {
                0
            }
        };
        // One waiting sender per freed slot (a cancelled waiter passes its wake-up on).
        for _ in 0..freed {
            self.shared.room.notify_one();
        }
    }

    /// The receiving future of [`recv_queued`](Self::recv_queued) and
    /// [`recv_held`](Self::recv_held); inlined, so each gets its own with `held` folded in.
    #[inline(always)]
    fn recv_with(&mut self, held: bool) -> impl Future<Output = (Option<T>, bool)> + '_ {
        let mut first = true;
        poll_fn(move |cx| {
            let queued = std::mem::replace(&mut first, false);
            let mut state = self.shared.state.lock();
            match self.take(&mut state, held) {
                Ok(msg) => Poll::Ready((Some(msg), queued)),
                Err(TryRecvError::Disconnected) => Poll::Ready((None, queued)),
                Err(TryRecvError::Empty) => {
                    state.parked = false;
                    match &mut state.receiver {
                        Some(waker) => waker.clone_from(cx.waker()),
                        None => state.receiver = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        })
    }

    /// Hands the wait for the next message to `waker`, when nothing is queued and the
    /// mailbox is open: the next message, a close or the last sender's drop wakes it, exactly
    /// as they wake a waiting `recv`. `false` (and nothing registered) when there is something
    /// to receive already. A hibernating activation parks itself this way (see
    /// [`activation`](super::activation)).
    pub fn park(&self, waker: &Waker) -> bool {
        let mut state = self.shared.state.lock();
        if !state.queue.is_empty()
            || state.closed
            || self.shared.senders.load(Ordering::Acquire) == 0
        {
            return false;
        }
        state.receiver = Some(waker.clone());
        state.parked = true;
        true
    }

    /// Refuses new messages; those already queued can still be received.
    pub fn close(&mut self) {
        self.shared.state.lock().closed = true;
        self.shared.room.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        self.shared.room.notify_waiters();
        // Dropped outside the lock: a message's drop may send (reply channels close).
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A task sending `value`, waiting for room if the mailbox is full.
    fn sender_task(
        tx: &Sender<u32>,
        value: u32,
    ) -> tokio::task::JoinHandle<Result<(), SendError<u32>>> {
        let tx = tx.clone();
        tokio::spawn(async move { tx.send(value).await })
    }

    /// Lets the spawned tasks of this single-threaded test runtime run until they wait.
    async fn let_tasks_run() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn bounded_in_order_and_closed_after_the_last_sender() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        tx.try_send(3).expect("room again");
        let weak = tx.downgrade();
        drop(tx);
        assert!(weak.upgrade().is_none(), "no strong sender left");
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_room_and_a_closed_mailbox_refuses() {
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(1).expect("room");
        let waiting = sender_task(&tx, 2);
        let_tasks_run().await;
        assert!(!waiting.is_finished(), "full: the sender waits");
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the free slot")
            .expect("task")
            .expect("sent");
        assert_eq!(rx.recv().await, Some(2));
        rx.close();
        assert!(matches!(tx.try_send(4), Err(TrySendError::Closed(4))));
        assert!(tx.send(5).await.is_err());
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn held_messages_keep_their_room_until_the_receiver_gives_it_back() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        // Taken out held: still two waiting, so still full.
        assert_eq!(rx.recv_held().await, Some(1));
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let waiting = sender_task(&tx, 3);
        let_tasks_run().await;
        assert!(
            !waiting.is_finished(),
            "full with one held: the sender waits"
        );
        // A plain receive frees the queued message's slot; the held one keeps its own.
        assert_eq!(rx.recv().await, Some(2));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the freed slot")
            .expect("task")
            .expect("sent");
        assert!(matches!(tx.try_send(4), Err(TrySendError::Full(4))));
        // The receiver served the held one: its room comes back, and a waiter gets it.
        let waiting = sender_task(&tx, 4);
        let_tasks_run().await;
        assert!(!waiting.is_finished());
        rx.hold(0);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the released slot")
            .expect("task")
            .expect("sent");
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, Some(4));
    }

    #[tokio::test]
    async fn every_waiting_sender_gets_the_room_of_several_slots_freed_at_once() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        let first = sender_task(&tx, 3);
        let second = sender_task(&tx, 4);
        let_tasks_run().await;
        assert!(!first.is_finished() && !second.is_finished(), "both wait");
        // Two slots freed before either woken sender runs: only the first take found the
        // mailbox full, so only it wakes a sender; that sender passes the room on.
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        for waiter in [first, second] {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("every waiter gets room")
                .expect("task")
                .expect("sent");
        }
        let mut got = vec![rx.try_recv().expect("one"), rx.try_recv().expect("two")];
        got.sort_unstable();
        assert_eq!(got, vec![3, 4]);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_passes_the_room_on() {
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(0).expect("room");
        let cancelled = sender_task(&tx, 1);
        let patient = sender_task(&tx, 2);
        let_tasks_run().await;
        assert!(
            !cancelled.is_finished() && !patient.is_finished(),
            "both wait"
        );
        cancelled.abort();
        let _ = cancelled.await;
        assert_eq!(rx.recv().await, Some(0));
        tokio::time::timeout(Duration::from_secs(5), patient)
            .await
            .expect("the remaining waiter got the slot")
            .expect("task")
            .expect("sent");
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn recv_queued_tells_a_queued_message_from_a_fresh_one() {
        let (tx, mut rx) = channel::<u32>(4);
        tx.try_send(1).expect("room");
        assert_eq!(rx.recv_queued().await, (Some(1), true));
        let shared = Arc::clone(&tx.shared);
        let receiver = tokio::spawn(async move { rx.recv_queued().await });
        let_tasks_run().await;
        assert!(shared.state.lock().receiver.is_some(), "the receiver waits");
        tx.try_send(2).expect("room");
        let got = tokio::time::timeout(Duration::from_secs(5), receiver)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, (Some(2), false), "arrived while the receiver waited");
    }

    fn clock_of<'a>(uses: &'a AtomicU64, ms: &'a AtomicU64) -> UseClock<'a> {
        UseClock { uses, ms }
    }

    #[tokio::test]
    async fn close_with_queues_a_last_message_even_when_full_and_refuses_later_ones() {
        let (uses, ms) = (AtomicU64::new(0), AtomicU64::new(0));
        let clock = clock_of(&uses, &ms);
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(1).expect("room");
        let weak = tx.downgrade();
        tx.close_with(99);
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert!(matches!(
            weak.try_send_used(3, clock),
            Err(TrySendError::Closed(3))
        ));
        tx.close_with(100); // closed already: dropped
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(99), "the last message comes last");
        assert_eq!(rx.recv().await, None);
        assert_eq!(uses.load(Ordering::Relaxed), 0, "a refused send is no use");
    }

    #[tokio::test]
    async fn a_weak_sender_sends_while_a_strong_one_lives_and_stamps_each_use() {
        let (uses, ms) = (AtomicU64::new(40), AtomicU64::new(7));
        let clock = clock_of(&uses, &ms);
        let (tx, mut rx) = channel::<u32>(1);
        let weak = tx.downgrade();
        weak.try_send_used(1, clock).expect("room");
        assert_eq!((tx.last_use().seq(), tx.last_use().ms()), (40, 7));
        assert!(matches!(
            weak.try_send_used(2, clock),
            Err(TrySendError::Full(2))
        ));
        assert_eq!(tx.last_use().seq(), 40, "a full mailbox took no use");
        assert_eq!(rx.recv().await, Some(1));
        ms.store(9, Ordering::Relaxed);
        tx.try_send_used(3, clock).expect("room");
        assert_eq!((weak.last_use().seq(), weak.last_use().ms()), (41, 9));
        assert_eq!(rx.recv().await, Some(3));
        drop(tx);
        assert!(
            matches!(weak.try_send_used(4, clock), Err(TrySendError::Closed(4))),
            "no strong sender: the receiver may have seen the end already"
        );
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn dropping_the_receiver_fails_waiting_senders() {
        let (tx, rx) = channel::<u32>(1);
        tx.try_send(1).expect("room");
        let waiting = sender_task(&tx, 2);
        let_tasks_run().await;
        assert!(!waiting.is_finished(), "full: the sender waits");
        drop(rx);
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert!(sent.is_err());
    }
}
