//! The traversals of the log every reader shares: every event after a
//! position (the start-up fold), one job's events, counts of a job's events,
//! each through [`Pages`].

use super::pages::Pages;
use super::store::{EventLog, EventRow, StoreError};
use crate::domain::Event;

/// Visits every event after position `after`, in order, decoded. The next
/// page is read while this one is decoded and visited (the start-up fold).
pub async fn for_each_event(
    store: &dyn EventLog,
    after: i64,
    mut visit: impl FnMut(&EventRow, Event) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for_each_row(store, after, |row| visit(row, row.decode_stored()?)).await
}

/// Visits every row after position `after`, in order, undecoded: the
/// caller decides what a row that cannot be decoded means. The next page
/// is read while this one is visited.
pub async fn for_each_row(
    store: &dyn EventLog,
    after: i64,
    mut visit: impl FnMut(&EventRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut pages = Pages::log(store, after);
    let mut rows = pages.next().await?;
    while let Some(page) = rows {
        let work = async {
            for row in &page {
                visit(row)?;
            }
            Ok::<(), StoreError>(())
        };
        let (next, done) = tokio::join!(pages.next(), work);
        done?;
        rows = next?;
    }
    Ok(())
}

/// How many job events (the kinds clients receive) one job has with
/// `after < seq <= through`, counted from its rows' kinds without decoding
/// them.
pub async fn count_job_events(
    store: &dyn EventLog,
    job_id: &str,
    after: i64,
    through: i64,
) -> Result<u64, StoreError> {
    let mut pages = Pages::job(store, job_id, after, through);
    let mut count = 0u64;
    while let Some(rows) = pages.next().await? {
        count += rows
            .iter()
            .filter(|r| crate::domain::event::is_job_kind(&r.kind))
            .count() as u64;
    }
    Ok(count)
}

/// Visits one job's events with `seq <= through_seq`, in order, decoded.
pub async fn for_each_job_event(
    store: &dyn EventLog,
    job_id: &str,
    through_seq: i64,
    visit: impl FnMut(Event),
) -> Result<(), StoreError> {
    for_each_job_event_between(store, job_id, 0, through_seq, visit).await
}

/// Visits one job's events after `after_seq`, in seq order.
pub async fn for_each_job_event_after(
    store: &dyn EventLog,
    job_id: &str,
    after_seq: i64,
    visit: impl FnMut(Event),
) -> Result<(), StoreError> {
    for_each_job_event_between(store, job_id, after_seq, i64::MAX, visit).await
}

async fn for_each_job_event_between(
    store: &dyn EventLog,
    job_id: &str,
    after_seq: i64,
    through_seq: i64,
    mut visit: impl FnMut(Event),
) -> Result<(), StoreError> {
    let mut pages = Pages::job(store, job_id, after_seq, through_seq);
    while let Some(events) = pages.next_events().await? {
        events.into_iter().for_each(&mut visit);
    }
    Ok(())
}
