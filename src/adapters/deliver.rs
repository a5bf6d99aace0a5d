//! Answer inline when the work is done in time, otherwise acknowledge now and deliver later:
//! never both, never neither.
//!
//! Both chat platforms drop an answer after 3 seconds. The work runs inside the request itself
//! for up to the reply budget: no task is spawned and nothing is handed between tasks when the
//! answer is ready in time, which is nearly always. When the budget runs out first (or the
//! request is dropped, e.g. its connection closed), the unfinished work moves into a tracked
//! task that hands its value to the late-delivery closure (Slack `response_url`, Discord edit).
//! One future is polled by one task at a time, so the two outcomes exclude each other by
//! construction. Tasks are tracked so shutdown can wait for them.
//!
//! The work comes boxed (`Unpin`), by the adapter that creates it: a request's future then
//! holds a pointer where it would hold the whole use case, at every level it passes through,
//! and moving it (each `.await` of a new future moves it once) copies 8 bytes, not kilobytes.

use std::future::Future;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::core::portal::{Refusal, Reply};

/// How a request was answered.
#[derive(Debug)]
pub enum Answer<T> {
    /// The work finished inside the budget: answer with it now.
    Inline(T),
    /// Acknowledge now; the value goes to the late-delivery closure.
    Deferred,
}

/// Work being waited for inline. Dropped before it finished (budget over, request gone), it
/// goes on in a tracked task and hands its value to `late`.
struct Pending<T, W, L, LF>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + Unpin + 'static,
    L: FnOnce(T) -> LF + Send + 'static,
    LF: Future<Output = ()> + Send + 'static,
{
    work: Option<W>,
    late: Option<L>,
    tasks: TaskTracker,
}

impl<T, W, L, LF> Drop for Pending<T, W, L, LF>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + Unpin + 'static,
    L: FnOnce(T) -> LF + Send + 'static,
    LF: Future<Output = ()> + Send + 'static,
{
    fn drop(&mut self) {
        let (Some(work), Some(late)) = (self.work.take(), self.late.take()) else {
            return; // answered inline
        };
        // Outside a runtime (it is shutting down) there is nowhere left to run it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.tasks.spawn_on(
            async move {
                let value = work.await;
                // Boxed: a waiting task stays small until its delivery actually runs.
                Box::pin(late(value)).await;
            },
            &runtime,
        );
    }
}

/// Runs `work` (boxed: see the module documentation); returns its value if it is ready within
/// `budget`, else arranges for `late` to get it.
pub async fn inline_or_later<T, W, L, LF>(
    tasks: &TaskTracker,
    budget: Duration,
    work: W,
    late: L,
) -> Answer<T>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + Unpin + 'static,
    L: FnOnce(T) -> LF + Send + 'static,
    LF: Future<Output = ()> + Send + 'static,
{
    let mut pending = Pending {
        work: Some(work),
        late: Some(late),
        tasks: tasks.clone(),
    };
    let Some(work) = pending.work.as_mut() else {
        return Answer::Deferred; // unreachable: set just above
    };
    match tokio::time::timeout(budget, work).await {
        Ok(value) => {
            pending.work = None;
            Answer::Inline(value)
        }
        // `pending` is dropped here: the rest of the work is delivered late.
        Err(_) => Answer::Deferred,
    }
}

/// Runs `work` in a tracked task whose value goes to `late`, and says to acknowledge now: for a
/// request whose answer must not go back inline (a delivery the shared store could not check
/// is maybe a replay: its inline answer would go to whoever sent it, while `late` goes where
/// the platform routes it, to the asker).
pub fn later<T, W, L, LF>(tasks: &TaskTracker, work: W, late: L) -> Answer<T>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + 'static,
    L: FnOnce(T) -> LF + Send + 'static,
    LF: Future<Output = ()> + Send + 'static,
{
    tasks.spawn(async move {
        let value = work.await;
        Box::pin(late(value)).await;
    });
    Answer::Deferred
}

/// The reply of `work`, or a clear "something went wrong" if it panicked: the asker must get
/// an answer either way (inline or late), never silence.
///
/// A combinator rather than an `async fn`: an `async fn` would hold `work` twice (the
/// argument, and the `catch_unwind` future made of it), doubling a request's future and the
/// bytes copied each time it moves (issue 23).
pub fn reply_or_internal_error<W>(work: W) -> impl Future<Output = Reply>
where
    W: Future<Output = Reply>,
{
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .map(|done| match done {
            Ok(reply) => reply,
            Err(_) => {
                tracing::error!("a request panicked; the asker was told something went wrong");
                Reply::Refused(Refusal::Internal)
            }
        })
}

/// A late delivery that did not go through, and whether trying again is safe.
#[derive(Debug)]
pub struct DeliveryError {
    /// For the operator's log (never a URL or a message body).
    pub detail: String,
    /// False when the message may have arrived (a timeout) or the platform said no (4xx):
    /// retrying would post it twice, or hammer a platform that bans for repeated 4xx.
    pub retry: bool,
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Retries a late delivery a few times with a short backoff when that is safe; the platforms'
/// tokens stay valid for minutes, so a brief outage on their side should not lose an answer.
pub async fn with_retries<F, Fut>(what: &'static str, mut attempt: F) -> Result<(), DeliveryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), DeliveryError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= 4 || !e.retry => {
                tracing::error!(what, tries, error = %e, "late delivery failed; giving up");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(what, tries, error = %e, "late delivery failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_panicking_request_still_gets_an_answer() {
        let reply = reply_or_internal_error(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Reply::Help
        })
        .await;
        assert!(matches!(reply, Reply::Refused(Refusal::Internal)));
    }

    #[tokio::test]
    async fn fast_work_is_inline_and_slow_work_is_delivered_once() {
        let tasks = TaskTracker::new();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let d = delivered.clone();
        let fast = inline_or_later(
            &tasks,
            Duration::from_millis(200),
            Box::pin(async { 1 }),
            move |v| {
                let d = d.clone();
                async move { d.lock().unwrap().push(v) }
            },
        )
        .await;
        assert!(matches!(fast, Answer::Inline(1)));
        let d = delivered.clone();
        let slow = inline_or_later(
            &tasks,
            Duration::from_millis(20),
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                2
            }),
            move |v| async move { d.lock().unwrap().push(v) },
        )
        .await;
        assert!(matches!(slow, Answer::Deferred));
        tasks.close();
        tasks.wait().await;
        assert_eq!(*delivered.lock().unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_answer_still_gets_it_delivered() {
        let tasks = TaskTracker::new();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let d = delivered.clone();
        let request = inline_or_later(
            &tasks,
            Duration::from_secs(5),
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                3
            }),
            move |v| async move { d.lock().unwrap().push(v) },
        );
        // The connection closes long before the budget: the request's future is dropped.
        assert!(tokio::time::timeout(Duration::from_millis(10), request)
            .await
            .is_err());
        tasks.close();
        tasks.wait().await;
        assert_eq!(*delivered.lock().unwrap(), vec![3]);
    }

    #[tokio::test]
    async fn at_the_edge_it_is_exactly_one_of_the_two() {
        let tasks = TaskTracker::new();
        for i in 0..200u64 {
            let delivered = Arc::new(Mutex::new(0));
            let d = delivered.clone();
            let answer = inline_or_later(
                &tasks,
                Duration::from_micros(500),
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_micros(i % 7 * 150)).await;
                }),
                move |_| async move { *d.lock().unwrap() += 1 },
            )
            .await;
            tasks.close();
            tasks.wait().await;
            tasks.reopen();
            let late = *delivered.lock().unwrap();
            match answer {
                Answer::Inline(()) => assert_eq!(late, 0),
                Answer::Deferred => assert_eq!(late, 1),
            }
        }
    }
}
