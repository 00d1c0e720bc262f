//! The analytics summary of a stretch of the log: a pure fold for `rejoin
//! replay --format summary`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::event::{Event, EventBody, JobId};

#[derive(Debug, Default)]
pub struct SummaryBuilder {
    events: u64,
    jobs: HashSet<JobId>,
    sessions: u64,
    connects: u64,
    reconnects: u64,
    resumed: u64,
    disconnects: u64,
    replaced: u64,
    rejected: u64,
    errors: u64,
    grace_expiries: u64,
    abandoned: u64,
    /// Jobs whose terminal event has been folded.
    finished: HashSet<JobId>,
    replayed: u64,
    gaps_ms: Vec<i64>,
    close_codes: HashMap<u16, u64>,
    kinds: BTreeMap<&'static str, u64>,
}

/// Nearest-rank percentiles of the reconnect gaps, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gaps {
    pub count: u64,
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub p99: Option<i64>,
    pub max: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseCodeCount {
    pub code: u16,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub events: u64,
    pub jobs: u64,
    pub sessions: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub resumed: u64,
    pub not_resumed: u64,
    pub disconnects: u64,
    pub replaced: u64,
    pub rejected: u64,
    pub errors: u64,
    pub replayed: u64,
    pub grace_expiries: u64,
    /// Sessions whose grace window expired while their job was still
    /// running: the client never came back. (A session that ends because
    /// its job finished has no grace window and is not counted.)
    pub abandoned: u64,
    /// Grace expiries per session.
    pub grace_expiry_rate: f64,
    pub gap_ms: Gaps,
    /// Disconnect close codes, most frequent first.
    pub close_codes: Vec<CloseCodeCount>,
    pub kinds: BTreeMap<&'static str, u64>,
}

impl SummaryBuilder {
    pub fn apply(&mut self, event: &Event) {
        self.events += 1;
        self.jobs.insert(event.job_id);
        *self.kinds.entry(event.body.kind()).or_default() += 1;
        match &event.body {
            EventBody::Connected(_) => {
                self.connects += 1;
                self.sessions += 1;
            }
            EventBody::Reconnected(r) => {
                self.reconnects += 1;
                self.replayed += r.missed;
                if r.resumed {
                    self.resumed += 1;
                } else {
                    self.sessions += 1;
                }
                if let Some(gap) = r.gap_ms {
                    self.gaps_ms.push(gap);
                }
            }
            EventBody::Disconnected(d) => {
                self.disconnects += 1;
                *self.close_codes.entry(d.code).or_default() += 1;
            }
            EventBody::Replaced(_) => self.replaced += 1,
            EventBody::ConnectRejected(r) => self.rejected += 1 + r.suppressed,
            EventBody::WsErrored(_) => self.errors += 1,
            EventBody::GraceExpired(_) => {
                self.grace_expiries += 1;
                if !self.finished.contains(&event.job_id) {
                    self.abandoned += 1;
                }
            }
            body if body.is_terminal() => {
                self.finished.insert(event.job_id);
            }
            _ => {}
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn finish(mut self) -> Summary {
        self.gaps_ms.sort_unstable();
        let gaps = &self.gaps_ms;
        let rank = |p: f64| -> Option<i64> {
            if gaps.is_empty() {
                return None;
            }
            let i = ((p / 100.0) * gaps.len() as f64).ceil() as usize;
            Some(gaps[i.clamp(1, gaps.len()) - 1])
        };
        let mut close_codes: Vec<CloseCodeCount> = self
            .close_codes
            .iter()
            .map(|(code, count)| CloseCodeCount {
                code: *code,
                count: *count,
            })
            .collect();
        close_codes.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
        Summary {
            events: self.events,
            jobs: self.jobs.len() as u64,
            sessions: self.sessions,
            connects: self.connects,
            reconnects: self.reconnects,
            resumed: self.resumed,
            not_resumed: self.reconnects - self.resumed,
            disconnects: self.disconnects,
            replaced: self.replaced,
            rejected: self.rejected,
            errors: self.errors,
            replayed: self.replayed,
            grace_expiries: self.grace_expiries,
            abandoned: self.abandoned,
            grace_expiry_rate: if self.sessions == 0 {
                0.0
            } else {
                self.grace_expiries as f64 / self.sessions as f64
            },
            gap_ms: Gaps {
                count: gaps.len() as u64,
                p50: rank(50.0),
                p90: rank(90.0),
                p99: rank(99.0),
                max: gaps.last().copied(),
            },
            close_codes,
            kinds: self.kinds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let b = SummaryBuilder {
            gaps_ms: (1..=100).collect(),
            ..Default::default()
        };
        let s = b.finish();
        assert_eq!(s.gap_ms.p50, Some(50));
        assert_eq!(s.gap_ms.p90, Some(90));
        assert_eq!(s.gap_ms.p99, Some(99));
        assert_eq!(s.gap_ms.max, Some(100));
        assert_eq!(SummaryBuilder::default().finish().gap_ms.p50, None);
    }
}
