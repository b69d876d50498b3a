//! The exporter's queue: batches waiting to be sent, bounded in bytes.
//!
//! Owns the bound and the drop accounting only. When a new batch does not
//! fit, the oldest batches go first (the newest profile is the most
//! useful); the batch being sent counts against the bound too, and is
//! marked to be dropped instead of retried when it is the one in the way.

use std::collections::VecDeque;

/// One export request and its encoded size.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    pub item: T,
    pub bytes: usize,
    /// Failed attempts so far.
    pub attempts: u32,
}

#[derive(Debug)]
pub(crate) struct ByteQueue<T> {
    waiting: VecDeque<Batch<T>>,
    waiting_bytes: usize,
    /// Size of the batch taken out for sending, if any.
    in_flight: Option<usize>,
    /// The batch in flight was evicted: do not put it back.
    in_flight_evicted: bool,
    limit: usize,
    pub dropped_batches: u64,
    pub dropped_bytes: u64,
}

impl<T> ByteQueue<T> {
    pub fn new(limit: usize) -> ByteQueue<T> {
        ByteQueue {
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            in_flight: None,
            in_flight_evicted: false,
            limit,
            dropped_batches: 0,
            dropped_bytes: 0,
        }
    }

    /// Bytes held: waiting batches plus the one being sent.
    pub fn bytes(&self) -> usize {
        self.waiting_bytes + self.in_flight.unwrap_or(0)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Batches waiting (not counting the one being sent).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    fn drop_batch(&mut self, bytes: usize) {
        self.dropped_batches += 1;
        self.dropped_bytes += bytes as u64;
    }

    /// Adds a batch at the back, dropping the oldest until it fits. A batch
    /// larger than the whole bound is dropped itself.
    pub fn push(&mut self, batch: Batch<T>) {
        if batch.bytes > self.limit {
            self.drop_batch(batch.bytes);
            return;
        }
        while self.bytes() + batch.bytes > self.limit {
            if let Some(old) = self.waiting.pop_front() {
                self.waiting_bytes -= old.bytes;
                self.drop_batch(old.bytes);
            } else if let Some(bytes) = self.in_flight.take() {
                self.in_flight_evicted = true;
                self.drop_batch(bytes);
            } else {
                break;
            }
        }
        self.waiting_bytes += batch.bytes;
        self.waiting.push_back(batch);
    }

    /// Takes the oldest batch out for sending; it still counts against the
    /// bound until [`Self::done`] or [`Self::put_back`].
    pub fn take(&mut self) -> Option<Batch<T>> {
        let batch = self.waiting.pop_front()?;
        self.waiting_bytes -= batch.bytes;
        self.in_flight = Some(batch.bytes);
        self.in_flight_evicted = false;
        Some(batch)
    }

    /// The batch in flight was sent, or failed for good.
    pub fn done(&mut self) {
        self.in_flight = None;
        self.in_flight_evicted = false;
    }

    /// The batch in flight is to be retried: it goes back to the front,
    /// unless a newer batch evicted it meanwhile. Returns false when it
    /// was evicted (and counted as dropped).
    pub fn put_back(&mut self, batch: Batch<T>) -> bool {
        let evicted = std::mem::take(&mut self.in_flight_evicted);
        self.in_flight = None;
        if evicted {
            return false;
        }
        self.waiting_bytes += batch.bytes;
        self.waiting.push_front(batch);
        true
    }

    /// Empties the queue, the batch in flight included, counting
    /// everything as dropped.
    pub fn abandon(&mut self) {
        while let Some(old) = self.waiting.pop_front() {
            self.drop_batch(old.bytes);
        }
        self.waiting_bytes = 0;
        if let Some(bytes) = self.in_flight.take() {
            if !std::mem::take(&mut self.in_flight_evicted) {
                self.drop_batch(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: u32, bytes: usize) -> Batch<u32> {
        Batch {
            item: id,
            bytes,
            attempts: 0,
        }
    }

    #[test]
    fn drops_the_oldest_when_full() {
        let mut q = ByteQueue::new(100);
        q.push(batch(1, 40));
        q.push(batch(2, 40));
        q.push(batch(3, 40));
        assert_eq!(q.bytes(), 80);
        assert_eq!((q.dropped_batches, q.dropped_bytes), (1, 40));
        assert_eq!(q.take().map(|b| b.item), Some(2));
        assert_eq!(q.bytes(), 80, "the batch in flight still counts");
        q.done();
        assert_eq!(q.bytes(), 40);
        q.push(batch(4, 500));
        assert_eq!(
            q.dropped_batches, 2,
            "a batch larger than the bound is dropped"
        );
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn the_batch_in_flight_can_be_evicted() {
        let mut q = ByteQueue::new(100);
        q.push(batch(1, 60));
        let sending = q.take().unwrap();
        q.push(batch(2, 60));
        assert!(!q.put_back(sending), "evicted while in flight");
        assert_eq!(q.bytes(), 60);
        assert_eq!(q.dropped_batches, 1);

        let sending = q.take().unwrap();
        assert!(q.put_back(sending));
        assert_eq!(q.take().map(|b| b.item), Some(2), "put back at the front");
    }
}
