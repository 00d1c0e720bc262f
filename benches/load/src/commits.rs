//! The writer's own figures over a load window: commits, events, the time
//! spent inside `commit` and the commits slower than 25 ms, read from
//! rejoin's `/metrics` (`rejoin_commit_seconds`, `rejoin_append_batch_size`)
//! or the relay's `/stats` before and after the window.

use std::time::Duration;

/// Counters of a writer at one moment, or their growth over a window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Commits {
    pub commits: f64,
    pub events: f64,
    pub seconds: f64,
    pub slow: f64,
}

impl Commits {
    /// Reads the counters of the server at `addr` (`relay`: the bare relay).
    pub async fn read(http: &reqwest::Client, addr: &str, relay: bool) -> anyhow::Result<Commits> {
        if relay {
            let v: serde_json::Value = http
                .get(format!("http://{addr}/stats"))
                .send()
                .await?
                .json()
                .await?;
            let f = |k: &str| v[k].as_f64().unwrap_or_default();
            return Ok(Commits {
                commits: f("commits"),
                events: f("events"),
                seconds: f("commitSeconds"),
                slow: f("slowCommits"),
            });
        }
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(Commits::from_metrics(&text))
    }

    /// The counters in rejoin's Prometheus text.
    pub fn from_metrics(text: &str) -> Commits {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let commits = value("rejoin_commit_seconds_count");
        Commits {
            commits,
            events: value("rejoin_append_batch_size_sum"),
            seconds: value("rejoin_commit_seconds_sum"),
            slow: commits - value("rejoin_commit_seconds_bucket{le=\"0.025\"}"),
        }
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Commits) -> Commits {
        Commits {
            commits: self.commits - before.commits,
            events: self.events - before.events,
            seconds: self.seconds - before.seconds,
            slow: self.slow - before.slow,
        }
    }

    /// The share of `window` the writer spent inside `commit`.
    pub fn share(&self, window: Duration) -> f64 {
        self.seconds / window.as_secs_f64().max(f64::EPSILON)
    }

    /// `4,989 commits for 12,099 events (2.4 a commit), inside commit 11.2 s
    /// of 20.0 s (56%), 3 over 25 ms`.
    pub fn summary(&self, window: Duration) -> String {
        format!(
            "{} commits for {} events ({:.1} a commit), inside commit {:.2} s of {:.1} s ({:.0}%), {} over 25 ms",
            super::rate(self.commits),
            super::rate(self.events),
            self.events / self.commits.max(1.0),
            self.seconds,
            window.as_secs_f64(),
            100.0 * self.share(window),
            self.slow
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rejoin_metrics() {
        let text = "# HELP x\nrejoin_commit_seconds_sum 1.5\nrejoin_commit_seconds_count 10\n\
                    rejoin_commit_seconds_bucket{le=\"0.01\"} 6\n\
                    rejoin_commit_seconds_bucket{le=\"0.025\"} 8\n\
                    rejoin_append_batch_size_sum 25\n";
        let c = Commits::from_metrics(text);
        assert_eq!(
            (c.commits, c.events, c.seconds, c.slow),
            (10.0, 25.0, 1.5, 2.0)
        );
    }
}
