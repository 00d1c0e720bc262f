//! The jobs held in memory: every live job (not finished, or with a
//! session connected or in its grace window), plus a bounded cache of
//! recently used finished ones. Anything else is read back from the log on
//! demand; what is held here is a cache of the log in both halves, the live
//! half complete and the cached half bounded.
//!
//! Only the writer changes job states. Readers that miss load a job from the
//! log themselves and offer it back with [`JobTable::finish_load`], which
//! takes it only if the writer has not touched that job meanwhile (a load
//! read before a commit must not overwrite the state after it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::queue::{EngineError, Queue, StreamDone, StreamReads};
use crate::domain::event::ForkOf;
use crate::domain::stream::StreamCommand;
use crate::domain::{Command, Event, EventBody, JobId, JobState};
use crate::log::{for_each_job_event, EventLog, StoreError};

/// Reads one job back from the log (its events, by index) and folds it. A
/// job that does not exist comes back as its genesis state.
pub async fn load_job(store: &dyn EventLog, id: JobId) -> Result<JobState, StoreError> {
    let mut state = JobState::genesis(id);
    for_each_job_event(store, &id.to_string(), i64::MAX, |e| state.apply(&e)).await?;
    Ok(state)
}

/// What [`JobTable::apply_logged`] did with an event read from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logged {
    /// It was the job's next event: applied.
    Applied,
    /// The held job already has it.
    Known,
    /// The held job lacks events before it: read the job back.
    Behind,
    /// The job is not held (finished and evicted, or never seen here).
    Unheld,
}

/// The held jobs. States are shared (`Arc`) so a read, or the snapshot a
/// checkpoint takes, copies pointers rather than states.
#[derive(Debug)]
pub struct JobTable {
    live: HashMap<JobId, Arc<JobState>>,
    cache: Lru,
    /// Loads in flight, by job: the token a reader's load must still hold to
    /// be taken. The writer removes a job's token whenever it moves the job.
    loading: HashMap<JobId, u64>,
    next_token: u64,
}

/// Where a read found its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Live,
    Cached,
}

impl JobTable {
    /// An empty table whose cache keeps at most `cache_entries` finished jobs.
    pub fn new(cache_entries: usize) -> Self {
        JobTable {
            live: HashMap::new(),
            cache: Lru::new(cache_entries),
            loading: HashMap::new(),
            next_token: 0,
        }
    }

    /// The job, if held (a cached one counts as used).
    pub fn get(&mut self, id: JobId) -> Option<(Arc<JobState>, Held)> {
        if let Some(job) = self.live.get(&id) {
            return Some((job.clone(), Held::Live));
        }
        self.cache.get(id).map(|job| (job, Held::Cached))
    }

    /// The job, if held, without counting it as used.
    pub fn peek(&self, id: JobId) -> Option<&Arc<JobState>> {
        self.live.get(&id).or_else(|| self.cache.peek(id))
    }

    /// Stores the writer's state of a job: among the live jobs when it is
    /// live, in the cache otherwise. A reader's load in flight for it is void.
    pub fn put(&mut self, job: Arc<JobState>) {
        let id = job.job_id;
        self.loading.remove(&id);
        if !job.is_known() {
            return;
        }
        if job.is_live() {
            self.cache.remove(id);
            self.live.insert(id, job);
        } else {
            self.live.remove(&id);
            self.cache.put(id, job);
        }
    }

    /// Lets go of the job, wherever it is held.
    pub fn remove(&mut self, id: JobId) {
        self.live.remove(&id);
        self.cache.remove(id);
        self.loading.remove(&id);
    }

    /// Applies an event read from the log (another node's, or the tail after
    /// a checkpoint) to its held job, in seq order. A job's first event makes
    /// it held.
    pub fn apply_logged(&mut self, event: &Event) -> Logged {
        // Retention's record (the log's own chain, never held): its units
        // have left the log, and memory.
        if let EventBody::UnitsRemoved(removed) = &event.body {
            for unit in &removed.units {
                self.remove(unit.id);
            }
            return Logged::Known;
        }
        let id = event.job_id;
        let held = match self.live.remove(&id) {
            Some(job) => Some(job),
            None => self.cache.take(id),
        };
        let mut job = match held {
            Some(job) => job,
            None if event.seq == 1 => Arc::new(JobState::genesis(id)),
            None => {
                // A reader's load begun before this event must not be taken.
                self.loading.remove(&id);
                return Logged::Unheld;
            }
        };
        let outcome = if event.seq <= job.head_seq {
            Logged::Known
        } else if event.seq > job.head_seq + 1 {
            Logged::Behind
        } else {
            Arc::make_mut(&mut job).apply(event);
            Logged::Applied
        };
        self.put(job);
        outcome
    }

    /// A reader is about to load `id` from the log: the token to offer it
    /// back with.
    pub fn begin_load(&mut self, id: JobId) -> u64 {
        self.next_token += 1;
        self.loading.insert(id, self.next_token);
        self.next_token
    }

    /// Takes a reader's load unless the writer touched the job since
    /// `begin_load` (or another load of it finished first).
    pub fn finish_load(&mut self, token: u64, job: Arc<JobState>) {
        let id = job.job_id;
        if self.loading.get(&id) != Some(&token) {
            return;
        }
        self.loading.remove(&id);
        if job.exists() && self.peek(id).is_none() {
            self.put(job);
        }
    }

    /// Forgets a load that found nothing.
    pub fn cancel_load(&mut self, id: JobId, token: u64) {
        if self.loading.get(&id) == Some(&token) {
            self.loading.remove(&id);
        }
    }

    /// The live jobs.
    pub fn live(&self) -> impl Iterator<Item = &Arc<JobState>> {
        self.live.values()
    }

    /// How many streams, open or retained, fork the incarnation of
    /// `source` that began at seq `from_seq` (all such are held: a stream
    /// is live until deleted for good).
    pub fn forks_of(&self, source: JobId, from_seq: i64) -> usize {
        self.live
            .values()
            .filter_map(|s| s.stream.as_ref())
            .filter(|s| {
                !s.deleted
                    && s.fork
                        .as_ref()
                        .is_some_and(|f| f.source_id == source && f.from_seq == from_seq)
            })
            .count()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn cached_count(&self) -> usize {
        self.cache.len()
    }
}

/// A least-recently-used map of finished jobs: a use stamps the entry with a
/// new tick, and the lowest tick goes first.
#[derive(Debug)]
struct Lru {
    capacity: usize,
    entries: HashMap<JobId, (Arc<JobState>, u64)>,
    by_use: BTreeMap<u64, JobId>,
    tick: u64,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Lru {
            capacity,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn peek(&self, id: JobId) -> Option<&Arc<JobState>> {
        self.entries.get(&id).map(|(job, _)| job)
    }

    fn get(&mut self, id: JobId) -> Option<Arc<JobState>> {
        self.tick += 1;
        let tick = self.tick;
        let (job, used) = self.entries.get_mut(&id)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, id);
        Some(job.clone())
    }

    fn put(&mut self, id: JobId, job: Arc<JobState>) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if let Some((_, used)) = self.entries.insert(id, (job, self.tick)) {
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.tick, id);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    fn remove(&mut self, id: JobId) {
        self.take(id);
    }

    fn take(&mut self, id: JobId) -> Option<Arc<JobState>> {
        let (job, used) = self.entries.remove(&id)?;
        self.by_use.remove(&used);
        Some(job)
    }
}

/// Ends a stream (`command` is its deletion or its expiry, given the
/// number of streams that fork it, which keep it retained): once it is gone
/// for good, its reads are forgotten and the sources it held are released
/// up the chain. A stream not held is read back first.
pub(super) async fn end_stream(
    queue: &Queue,
    jobs: &std::sync::Mutex<JobTable>,
    reads: &StreamReads,
    id: JobId,
    command: impl FnOnce(usize) -> StreamCommand,
) -> Result<StreamDone, EngineError> {
    let lock = || jobs.lock().unwrap_or_else(|p| p.into_inner());
    let (forks, fork) = {
        let table = lock();
        match table.peek(id).and_then(|j| j.stream.as_ref()) {
            Some(s) => (table.forks_of(id, s.first_seq), s.fork.clone()),
            None => (0, None),
        }
    };
    let command = Command::Stream {
        command: command(forks),
        last_read: reads.last(id),
    };
    let done = queue.stream(id, command).await?;
    let gone = lock()
        .peek(id)
        .and_then(|j| j.stream.as_ref())
        .is_some_and(|s| s.deleted);
    if gone {
        reads.forget(id);
        release_sources(queue, jobs, fork).await?;
    }
    Ok(done)
}

/// A fork ended (deleted or expired for good): its source, if retained
/// only for its forks and now without one, is deleted for good, and so on
/// up the chain.
async fn release_sources(
    queue: &Queue,
    jobs: &std::sync::Mutex<JobTable>,
    mut fork: Option<ForkOf>,
) -> Result<(), EngineError> {
    while let Some(f) = fork.take() {
        let (forks, next) = {
            let table = jobs.lock().unwrap_or_else(|p| p.into_inner());
            let Some(source) = table.peek(f.source_id) else {
                return Ok(());
            };
            let Some(s) = source
                .stream
                .as_ref()
                .filter(|s| s.retained && s.first_seq == f.from_seq)
            else {
                return Ok(());
            };
            (table.forks_of(f.source_id, f.from_seq), s.fork.clone())
        };
        if forks > 0 {
            return Ok(());
        }
        let command = Command::Stream {
            command: StreamCommand::Release { forks },
            last_read: None,
        };
        queue.stream(f.source_id, command).await?;
        fork = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Event, EventBody, JobCompleted, JobCreated};
    use chrono::Utc;
    use uuid::Uuid;

    fn job(finished: bool) -> Arc<JobState> {
        let id = Uuid::new_v4();
        let mut state = JobState::genesis(id);
        let mut bodies = vec![EventBody::JobCreated(JobCreated {
            metadata: None,
            ..JobCreated::default()
        })];
        if finished {
            bodies.push(EventBody::JobCompleted(JobCompleted { result: None }));
        }
        for (i, body) in bodies.into_iter().enumerate() {
            state.apply(&Event {
                seq: i as i64 + 1,
                ..Event::new(id, None, Utc::now(), body)
            });
        }
        Arc::new(state)
    }

    #[test]
    fn live_jobs_stay_and_finished_ones_are_bounded() {
        let mut table = JobTable::new(3);
        let running: Vec<_> = (0..10).map(|_| job(false)).collect();
        for j in &running {
            table.put(j.clone());
        }
        let done: Vec<_> = (0..10).map(|_| job(true)).collect();
        for j in &done {
            table.put(j.clone());
        }
        assert_eq!(table.live_count(), 10);
        assert_eq!(table.cached_count(), 3);
        // The three most recently stored finished jobs are the ones kept.
        for j in &done[..7] {
            assert!(table.get(j.job_id).is_none());
        }
        for j in &done[7..] {
            assert_eq!(table.get(j.job_id).map(|(_, h)| h), Some(Held::Cached));
        }
        for j in &running {
            assert_eq!(table.get(j.job_id).map(|(_, h)| h), Some(Held::Live));
        }
    }

    #[test]
    fn a_use_keeps_a_cached_job() {
        let mut table = JobTable::new(2);
        let (a, b, c) = (job(true), job(true), job(true));
        table.put(a.clone());
        table.put(b.clone());
        assert!(table.get(a.job_id).is_some());
        table.put(c.clone());
        assert!(table.peek(a.job_id).is_some(), "a was used after b");
        assert!(
            table.peek(b.job_id).is_none(),
            "b was the least recently used"
        );
    }

    #[test]
    fn a_load_overtaken_by_the_writer_is_not_taken() {
        let mut table = JobTable::new(10);
        let old = job(true);
        let token = table.begin_load(old.job_id);
        // The writer moves the job on meanwhile.
        let mut newer = (*old).clone();
        newer.head_seq += 1;
        let newer = Arc::new(newer);
        table.put(newer.clone());
        table.finish_load(token, old.clone());
        assert_eq!(table.peek(old.job_id), Some(&newer));

        // Without the writer in between, the load is taken.
        let other = job(true);
        let token = table.begin_load(other.job_id);
        table.finish_load(token, other.clone());
        assert_eq!(table.peek(other.job_id), Some(&other));
    }
}
