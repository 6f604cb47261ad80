//! Writing behind the engine: the output file is written on a second thread while the next
//! tensor is quantized, so `write` (the kernel's copy into the page cache, ~20% of the main
//! job's time) overlaps the engine instead of following it.
//!
//! At most one job waits in the queue: the memory in flight is the tensor being quantized,
//! one result queued and one being written.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use crate::error::{Error, Result};

/// One write, run on the writer thread with the sink.
pub type Job<'a, W> = Box<dyn FnOnce(&mut W) -> Result<()> + Send + 'a>;

/// A sink owned by a writer thread of `scope`, fed jobs in order.
pub struct WriteBehind<'scope, W: Send + 'scope> {
    jobs: Option<SyncSender<Job<'scope, W>>>,
    worker: ScopedJoinHandle<'scope, Result<W>>,
}

impl<'scope, W: Send + 'scope> WriteBehind<'scope, W> {
    /// Start the writer thread; it owns `sink` until [`Self::finish`].
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, mut sink: W) -> Self {
        let (tx, rx) = sync_channel::<Job<'scope, W>>(1);
        let worker = scope.spawn(move || {
            for job in rx {
                // The first failure stops the thread: the sender sees it at its next submit.
                job(&mut sink)?;
            }
            Ok(sink)
        });
        WriteBehind { jobs: Some(tx), worker }
    }

    /// Queue `job` after the ones before it (waits while the queue is full). `false` when
    /// the writer has stopped on an error, which [`Self::finish`] returns.
    pub fn submit(&mut self, job: Job<'scope, W>) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Wait for every queued write; the sink back, or the first write's error.
    pub fn finish(mut self) -> Result<W> {
        drop(self.jobs.take());
        self.worker.join().unwrap_or_else(|_| Err(Error::Internal("the output writer thread panicked".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_and_the_first_error_stops_the_writer() {
        let out = std::thread::scope(|s| {
            let mut w = WriteBehind::start(s, Vec::new());
            for i in 0..100 {
                assert!(w.submit(Box::new(move |v: &mut Vec<i32>| {
                    v.push(i);
                    Ok(())
                })));
            }
            w.finish()
        })
        .unwrap();
        assert_eq!(out, (0..100).collect::<Vec<_>>());

        let err = std::thread::scope(|s| {
            let mut w = WriteBehind::start(s, 0);
            w.submit(Box::new(|_: &mut i32| Err(Error::Io("disk full".into()))));
            // Later jobs are refused or dropped; the error comes back from finish.
            for _ in 0..10 {
                w.submit(Box::new(|n: &mut i32| {
                    *n += 1;
                    Ok(())
                }));
            }
            w.finish()
        });
        assert!(matches!(err, Err(Error::Io(m)) if m == "disk full"));
    }
}
