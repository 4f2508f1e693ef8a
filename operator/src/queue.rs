//! The reconcile queue: each VirtualService is queued at most once and in
//! flight at most once; a trigger during its reconcile runs it once more
//! afterwards; each may have one requeue time.
//!
//! It keeps a name and a few flags per object. kube-runtime's scheduler kept
//! a full object reference per entry in a delay queue whose capacity stayed
//! at its high-water mark: about 7 MB after a start with 10,000 objects.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cache::VsName;

/// What a reconcile asks of the queue when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run again after this long, unless a trigger comes first.
    Requeue(Duration),
    /// Run again on the next trigger only.
    AwaitChange,
}

#[derive(Debug, Default)]
struct Slot {
    queued: bool,
    running: bool,
    /// Triggered while running: queue again when done.
    again: bool,
    due: Option<Instant>,
}

impl Slot {
    fn idle(&self) -> bool {
        !self.queued && !self.running && self.due.is_none()
    }
}

#[derive(Default)]
struct Inner {
    ready: VecDeque<VsName>,
    slots: HashMap<VsName, Slot>,
    /// Requeue times; an entry whose slot has another `due` is stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, VsName)>>,
    /// Slots with a `due`: how many timers are live.
    live_timers: usize,
}

impl Inner {
    fn trigger(&mut self, name: VsName) -> bool {
        let slot = self.slots.entry(name.clone()).or_default();
        if slot.running {
            slot.again = true;
            false
        } else if slot.queued {
            false
        } else {
            slot.queued = true;
            self.ready.push_back(name);
            true
        }
    }

    fn set_due(&mut self, name: &VsName, due: Option<Instant>) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        match (slot.due.is_some(), due.is_some()) {
            (false, true) => self.live_timers += 1,
            (true, false) => self.live_timers -= 1,
            _ => {}
        }
        slot.due = due;
        if let Some(at) = due {
            self.timers.push(Reverse((at, name.clone())));
        }
        // Stale entries pile up when objects are re-run before their time:
        // rebuilt once they are half as many as the live ones. A start runs
        // every object twice (its status write comes back as a change), and
        // the heap keeps the capacity it reaches: 1.5 entries per object
        // rather than 2 (32 bytes each).
        if self.timers.len() > self.live_timers + self.live_timers / 2 + 64 {
            let slots = &self.slots;
            self.timers
                .retain(|Reverse((at, n))| slots.get(n).and_then(|s| s.due) == Some(*at));
        }
    }

    fn drop_if_idle(&mut self, name: &VsName) {
        if let Entry::Occupied(slot) = self.slots.entry(name.clone())
            && slot.get().idle()
        {
            slot.remove();
        }
    }

    /// Queues every object whose time has come.
    fn fire_timers(&mut self, now: Instant) -> bool {
        let mut fired = false;
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, name))) = self.timers.pop() else {
                break;
            };
            if self.slots.get(&name).and_then(|s| s.due) != Some(at) {
                continue;
            }
            self.set_due(&name, None);
            fired |= self.trigger(name);
        }
        fired
    }
}

#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    wake: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change under the lock leaves the queue consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `name` to be reconciled.
    pub fn trigger(&self, name: VsName) {
        if self.lock().trigger(name) {
            self.wake.notify_one();
        }
    }

    pub fn trigger_all(&self, names: impl IntoIterator<Item = VsName>) {
        let mut inner = self.lock();
        let mut any = false;
        for name in names {
            any |= inner.trigger(name);
        }
        drop(inner);
        if any {
            self.wake.notify_one();
        }
    }

    /// The object is gone: its requeue time goes with it. (Queued, it is
    /// skipped when its turn comes, as its lookup finds nothing.)
    pub fn forget(&self, name: &VsName) {
        let mut inner = self.lock();
        inner.set_due(name, None);
        inner.drop_if_idle(name);
    }

    /// The next object to reconcile, now marked as running.
    fn start(&self, now: Instant) -> Option<VsName> {
        let mut inner = self.lock();
        inner.fire_timers(now);
        let name = inner.ready.pop_front()?;
        // Past a burst, the backlog's capacity is not kept.
        if inner.ready.is_empty() && inner.ready.capacity() > 1024 {
            inner.ready.shrink_to_fit();
        }
        // This run stands in for a pending requeue.
        inner.set_due(&name, None);
        if let Some(slot) = inner.slots.get_mut(&name) {
            slot.queued = false;
            slot.running = true;
        }
        Some(name)
    }

    fn finish(&self, name: &VsName, next: Next, now: Instant) {
        let mut inner = self.lock();
        let again = match inner.slots.get_mut(name) {
            Some(slot) => {
                slot.running = false;
                std::mem::take(&mut slot.again)
            }
            None => false,
        };
        if let Next::Requeue(after) = next {
            inner.set_due(name, Some(now + after));
        }
        let queued = again && inner.trigger(name.clone());
        inner.drop_if_idle(name);
        drop(inner);
        if queued {
            self.wake.notify_one();
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.lock().timers.peek().map(|Reverse((at, _))| *at)
    }

    /// No object queued, running or waiting for a requeue time.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().slots.is_empty()
    }

    /// Runs `work` for queued objects, at most `concurrency` at once, until
    /// `shutdown` completes; then waits for the runs in flight, at most `drain`
    /// (a run stuck on an unreachable API server must not hold up the exit).
    pub async fn run<F, Fut>(
        &self,
        concurrency: usize,
        drain: Duration,
        work: F,
        shutdown: impl Future<Output = ()>,
    ) where
        F: Fn(VsName) -> Fut,
        Fut: Future<Output = Next>,
    {
        let mut running = FuturesUnordered::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            while running.len() < concurrency {
                let Some(name) = self.start(Instant::now()) else {
                    break;
                };
                let run = work(name.clone());
                running.push(async move { (name, run.await) });
            }
            let timer = self.next_timer();
            tokio::select! {
                _ = &mut shutdown => break,
                Some((name, next)) = running.next(), if !running.is_empty() => {
                    self.finish(&name, next, Instant::now());
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {}
            }
        }
        let finishing = async {
            while let Some((name, next)) = running.next().await {
                self.finish(&name, next, Instant::now());
            }
        };
        if tokio::time::timeout(drain, finishing).await.is_err() {
            tracing::warn!(
                left = running.len(),
                "reconciles still running at shutdown were abandoned"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn name(n: &str) -> VsName {
        VsName::new("ns", n)
    }

    #[test]
    fn a_trigger_while_queued_is_merged_and_while_running_runs_once_more() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.trigger(name("a"));
        q.trigger(name("a"));
        q.trigger(name("b"));
        assert_eq!(q.start(t0), Some(name("a")));
        assert_eq!(q.start(t0), Some(name("b")));
        assert_eq!(q.start(t0), None, "a was queued once");
        q.trigger(name("a"));
        q.trigger(name("a"));
        assert_eq!(q.start(t0), None, "a is running");
        q.finish(&name("a"), Next::AwaitChange, t0);
        assert_eq!(q.start(t0), Some(name("a")), "once more after its run");
        q.finish(&name("a"), Next::AwaitChange, t0);
        q.finish(&name("b"), Next::AwaitChange, t0);
        assert_eq!(q.start(t0), None);
        assert!(q.is_empty(), "idle objects keep no slot");
    }

    #[test]
    fn a_requeue_fires_at_its_time_and_a_run_before_it_replaces_it() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.trigger(name("a"));
        assert_eq!(q.start(t0), Some(name("a")));
        q.finish(&name("a"), Next::Requeue(Duration::from_secs(10)), t0);
        assert_eq!(q.next_timer(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(q.start(t0 + Duration::from_secs(9)), None);
        assert_eq!(q.start(t0 + Duration::from_secs(10)), Some(name("a")));
        q.finish(
            &name("a"),
            Next::Requeue(Duration::from_secs(10)),
            t0 + Duration::from_secs(10),
        );
        // Triggered early: that run replaces the pending requeue...
        q.trigger(name("a"));
        assert_eq!(q.start(t0 + Duration::from_secs(11)), Some(name("a")));
        q.finish(&name("a"), Next::AwaitChange, t0 + Duration::from_secs(11));
        // ...so nothing fires at the old time.
        assert_eq!(q.start(t0 + Duration::from_secs(30)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_forgotten_object_loses_its_requeue() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.trigger(name("a"));
        q.start(t0);
        q.finish(&name("a"), Next::Requeue(Duration::from_secs(1)), t0);
        q.forget(&name("a"));
        assert!(q.is_empty());
        assert_eq!(q.start(t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn stale_timers_do_not_pile_up() {
        let q = Queue::default();
        let t0 = Instant::now();
        for round in 0..1000u64 {
            q.trigger(name("a"));
            let at = t0 + Duration::from_millis(round);
            assert_eq!(q.start(at), Some(name("a")));
            q.finish(&name("a"), Next::Requeue(Duration::from_secs(3600)), at);
        }
        assert!(q.lock().timers.len() <= 66, "{}", q.lock().timers.len());
        assert_eq!(q.lock().live_timers, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn run_keeps_to_its_concurrency_and_drains_on_shutdown() {
        let q = Arc::new(Queue::default());
        let (in_flight, peak, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        q.trigger_all((0..20).map(|i| name(&format!("vs-{i}"))));
        let counters = (in_flight.clone(), peak.clone(), done.clone());
        let work = move |n: VsName| {
            let (in_flight, peak, done) =
                (counters.0.clone(), counters.1.clone(), counters.2.clone());
            async move {
                if n == name("late") && done.load(Ordering::SeqCst) == 20 {
                    done.fetch_add(1, Ordering::SeqCst);
                    return Next::Requeue(Duration::from_millis(500));
                }
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Next::AwaitChange
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runner = {
            let q = q.clone();
            tokio::spawn(async move {
                q.run(4, Duration::from_secs(5), work, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(done.load(Ordering::SeqCst), 20);
        assert_eq!(peak.load(Ordering::SeqCst), 4);
        // A requeue runs at its time.
        q.trigger(name("late"));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(done.load(Ordering::SeqCst), 21);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Its second run is in flight: shutdown waits for it.
        let _ = stop_tx.send(());
        runner.await.unwrap();
        assert_eq!(
            done.load(Ordering::SeqCst),
            22,
            "the run in flight finished"
        );
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_run_does_not_hold_up_shutdown() {
        let q = Queue::default();
        q.trigger(name("stuck"));
        let started = Instant::now();
        q.run(
            1,
            Duration::from_secs(5),
            |_| std::future::pending::<Next>(),
            tokio::time::sleep(Duration::from_secs(1)),
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }
}
