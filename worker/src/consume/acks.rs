//! Acks in batches: a job's delivery is still acked only once its result is
//! stored and confirmed, but the frames that say so are shared.
//!
//! An ack with `multiple` settles every delivery up to its tag, so one
//! frame can stand for many jobs, and the broker settles them in one
//! command of its quorum queue's log instead of one each. It may only be
//! sent once every delivery up to that tag is ready to be acked: a job
//! still running, or one that was requeued, must not be covered by it.
//! [`Pending`] keeps that book (every delivered tag, and which are ready);
//! the task in [`Acks::start`] sends what it allows.
//!
//! Nothing waits to be batched: when the channel is idle an ack goes out at
//! once, as before. Batches form by themselves under load, from the acks
//! that arrive while the previous frames are being written. A ready
//! delivery behind one still running (a long job delivered before it) is
//! acked on its own after [`HOLD`], so a long job never holds back the
//! acks, and with them the prefetch credit, of the short ones after it.
use crate::metrics::METRICS;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a delivery ready to be acked waits for the ones delivered
/// before it, so that one `multiple` ack covers it too, before it is acked
/// on its own. Short against a trivial job's round trip through the
/// broker; long against the gap between two trivial jobs ending.
pub(super) const HOLD: Duration = Duration::from_millis(5);

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand {
    /// Its job is under way.
    UnderWay,
    /// Ready to ack since this moment.
    Ready(Instant),
    /// Settled already, its frame sent (acked alone, or nacked): kept only
    /// until the run from the lowest tag passes it.
    Settled,
}

/// The deliveries of one channel not yet passed by an ack from the lowest
/// tag, by tag. Tags count from 1 on each channel, every delivery taking
/// the next, so `below` (every tag up to it is settled) and consecutive
/// tags tell whether a run has a gap: a tag missing from the book is a
/// delivery not read from its consumer yet (with two consumers on one
/// channel, as during a prefetch switch, tags arrive out of order), and an
/// ack with `multiple` past it would ack a job that never ran.
#[derive(Debug, Default)]
pub(super) struct Pending {
    tags: BTreeMap<u64, Stand>,
    below: u64,
}

/// The frames that ack what may be acked now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Batch {
    /// One ack up to this tag, with `multiple` when it covers more than
    /// that one: every delivery up to it is ready or settled.
    pub(super) upto: Option<(u64, bool)>,
    /// Ready deliveries behind one that is not, acked one by one.
    pub(super) singles: Vec<u64>,
}

impl Batch {
    fn frames(&self) -> usize {
        usize::from(self.upto.is_some()) + self.singles.len()
    }
}

impl Pending {
    pub(super) fn delivered(&mut self, tag: u64) {
        if tag > self.below {
            self.tags.insert(tag, Stand::UnderWay);
        }
    }

    pub(super) fn ready(&mut self, tag: u64, now: Instant) {
        if let Some(stand @ Stand::UnderWay) = self.tags.get_mut(&tag) {
            *stand = Stand::Ready(now);
        }
    }

    /// Whether a nack of `tag` may be sent: only while its job is under
    /// way. One ready to ack (or acked) is never taken back, and a tag out
    /// of the book is settled already or was never delivered. Once its
    /// nack is sent it no longer holds back the acks after it.
    pub(super) fn nack(&mut self, tag: u64) -> bool {
        match self.tags.get_mut(&tag) {
            Some(stand @ Stand::UnderWay) => {
                *stand = Stand::Settled;
                true
            }
            _ => false,
        }
    }

    /// What to ack now: the run of consecutive tags from the lowest that
    /// are all ready or settled, as one frame, and each ready delivery
    /// behind a tag under way (or not read yet) that has waited `hold`
    /// (every one of them when `all`).
    pub(super) fn take(&mut self, now: Instant, hold: Duration, all: bool) -> Batch {
        let mut batch = Batch::default();
        let mut ready = 0;
        while let Some(entry) = self.tags.first_entry() {
            let tag = *entry.key();
            if tag != self.below + 1 || *entry.get() == Stand::UnderWay {
                break;
            }
            if matches!(entry.remove(), Stand::Ready(_)) {
                ready += 1;
                batch.upto = Some((tag, ready > 1));
            }
            self.below = tag;
        }
        for (&tag, stand) in &mut self.tags {
            if let Stand::Ready(since) = *stand
                && (all || now.duration_since(since) >= hold)
            {
                batch.singles.push(tag);
                *stand = Stand::Settled;
            }
        }
        batch
    }

    /// When the earliest ready delivery still waiting has waited `hold`.
    pub(super) fn next_due(&self, hold: Duration) -> Option<Instant> {
        self.tags
            .values()
            .filter_map(|stand| match stand {
                Stand::Ready(since) => Some(*since + hold),
                _ => None,
            })
            .min()
    }
}

enum Event {
    Delivered(u64),
    Ready(u64),
    Nack {
        tag: u64,
        requeue: bool,
    },
    /// Send every ready ack now, then answer.
    Flush(oneshot::Sender<()>),
}

/// The handle a session's jobs ack through (public for the fleet
/// benchmark, whose floor acks the same way).
#[derive(Clone)]
pub struct Acks {
    events: mpsc::UnboundedSender<Event>,
}

impl Acks {
    /// Starts the task that acks on `channel` (the consume channel, whose
    /// delivery tags these are). It ends when every handle is dropped,
    /// after acking what was ready.
    pub fn start(channel: Channel) -> Acks {
        let (events, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_acks(channel, rx));
        Acks { events }
    }

    /// A delivery arrived: told before its job can end, so that no
    /// `multiple` ack covers it before it is ready.
    pub fn delivered(&self, tag: u64) {
        let _ = self.events.send(Event::Delivered(tag));
    }

    /// Its result is stored and confirmed: ack it.
    pub fn ack(&self, tag: u64) {
        let _ = self.events.send(Event::Ready(tag));
    }

    /// Nack it, requeued or (`requeue` false) dead-lettered by the queue:
    /// sent before any ack that passes its tag, and only while its job is
    /// under way (a delivery already acked is never taken back).
    pub fn nack(&self, tag: u64, requeue: bool) {
        let _ = self.events.send(Event::Nack { tag, requeue });
    }

    /// Sends every ack that is ready, and waits until they are written
    /// (before a draining worker closes its connection).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.events.send(Event::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn send_acks(channel: Channel, mut events: mpsc::UnboundedReceiver<Event>) {
    let mut pending = Pending::default();
    let mut flushes = Vec::new();
    let mut nacks = Vec::new();
    let apply = |event: Event,
                 pending: &mut Pending,
                 flushes: &mut Vec<_>,
                 nacks: &mut Vec<(u64, bool)>| match event {
        Event::Delivered(tag) => pending.delivered(tag),
        Event::Ready(tag) => pending.ready(tag, Instant::now()),
        Event::Nack { tag, requeue } => {
            if pending.nack(tag) {
                nacks.push((tag, requeue));
            }
        }
        Event::Flush(answer) => flushes.push(answer),
    };
    let mut open = true;
    while open {
        let due = pending.next_due(HOLD);
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => apply(event, &mut pending, &mut flushes, &mut nacks),
                None => open = false,
            },
            () = sleep_until(due), if due.is_some() => {}
        }
        // Everything that arrived meanwhile goes into this batch.
        while open {
            match events.try_recv() {
                Ok(event) => apply(event, &mut pending, &mut flushes, &mut nacks),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let answers = std::mem::take(&mut flushes);
        let batch = pending.take(Instant::now(), HOLD, !open || !answers.is_empty());
        // Nacks first: written before an ack that passes their tags.
        for (tag, requeue) in nacks.drain(..) {
            let options = BasicNackOptions {
                multiple: false,
                requeue,
            };
            if let Err(e) = channel.basic_nack(tag, options).await {
                tracing::debug!(error = %e, "could not nack; the broker will redeliver");
                return;
            }
        }
        if let Err(e) = send(&channel, &batch).await {
            // The channel is gone: its unacked deliveries go back to the
            // queue, and the session ends on the consumer's error.
            tracing::debug!(error = %e, "could not ack; the broker will redeliver");
            return;
        }
        for answer in answers {
            let _ = answer.send(());
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

async fn send(channel: &Channel, batch: &Batch) -> lapin::Result<()> {
    if batch.frames() == 0 {
        return Ok(());
    }
    let multiple = batch
        .upto
        .map(|(tag, multiple)| (tag, BasicAckOptions { multiple }));
    let singles = batch
        .singles
        .iter()
        .map(|&tag| (tag, BasicAckOptions { multiple: false }));
    let sent = futures::future::join_all(
        multiple
            .into_iter()
            .chain(singles)
            .map(|(tag, options)| channel.basic_ack(tag, options)),
    )
    .await;
    METRICS.ack_frames.inc_by(batch.frames() as u64);
    sent.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_ready_run_from_the_lowest_tag_is_one_frame() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        for tag in 1..=5 {
            p.delivered(tag);
        }
        assert_eq!(p.take(t0, HOLD, false), Batch::default(), "nothing ready");
        p.ready(2, t0);
        p.ready(1, t0);
        p.ready(3, t0);
        let batch = p.take(t0, HOLD, false);
        assert_eq!(batch.upto, Some((3, true)));
        assert!(batch.singles.is_empty());
        // One ready alone is a plain ack.
        p.ready(4, t0);
        assert_eq!(p.take(t0, HOLD, false).upto, Some((4, false)));
    }

    #[test]
    fn a_delivery_under_way_is_never_covered_and_those_behind_it_wait_at_most_the_hold() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        for tag in 1..=5 {
            p.delivered(tag);
        }
        // 1 is a long job: 2 and 3 are ready behind it.
        p.ready(2, t0);
        p.ready(3, t0 + MS);
        assert_eq!(p.take(t0 + MS, HOLD, false), Batch::default());
        assert_eq!(p.next_due(HOLD), Some(t0 + HOLD));
        let batch = p.take(t0 + HOLD, HOLD, false);
        assert_eq!(batch.upto, None, "1 is under way");
        assert_eq!(batch.singles, vec![2]);
        assert!(!p.nack(2), "an acked delivery is never nacked");
        assert_eq!(p.next_due(HOLD), Some(t0 + MS + HOLD));
        // A flush takes the rest of the ready ones at once.
        let batch = p.take(t0 + 2 * MS, HOLD, true);
        assert_eq!(batch.singles, vec![3]);
        // 1 requeued: the run passes 1 to 3, nacked or acked already, and
        // acks 4 and 5 in one frame.
        assert!(p.nack(1));
        p.ready(5, t0 + 3 * MS);
        p.ready(4, t0 + 3 * MS);
        assert_eq!(p.take(t0 + 3 * MS, HOLD, false).upto, Some((5, true)));
        assert_eq!(p.next_due(HOLD), None);
        assert!(p.tags.is_empty());
    }

    #[test]
    fn a_tag_not_read_yet_stops_the_run() {
        // Two consumers on one channel: 2 is still in the other one's
        // buffer while 1 and 3 are done.
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.delivered(1);
        p.delivered(3);
        p.ready(1, t0);
        p.ready(3, t0);
        let batch = p.take(t0, HOLD, false);
        assert_eq!(batch.upto, Some((1, false)), "never past 2");
        assert!(batch.singles.is_empty());
        let batch = p.take(t0 + HOLD, HOLD, false);
        assert_eq!(
            batch,
            Batch {
                upto: None,
                singles: vec![3]
            }
        );
        // 2 arrives and ends: the run passes 3, acked already, without
        // acking it again.
        p.delivered(2);
        p.ready(2, t0 + HOLD);
        assert_eq!(p.take(t0 + HOLD, HOLD, false).upto, Some((2, false)));
        assert!(p.tags.is_empty());
    }

    #[test]
    fn a_tag_readied_before_it_was_delivered_or_twice_changes_nothing() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.ready(9, t0);
        assert_eq!(p.take(t0, HOLD, true), Batch::default());
        for tag in 1..=9 {
            p.delivered(tag);
            p.ready(tag, t0);
        }
        assert_eq!(p.take(t0, HOLD, false).upto, Some((9, true)));
        p.ready(9, t0);
        p.delivered(9);
        assert_eq!(p.take(t0, HOLD, true), Batch::default());
    }
}
