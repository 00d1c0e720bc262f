-- Abandoned jobs: a watcher's grace window expired while the job was still
-- running, and no connect followed. A session that ends because the job
-- finished (its socket closed after the terminal event) is not abandoned:
-- it has no grace window, and in logs written before watchers existed, an
-- expiry after the terminal event is not counted either. `outcome` is how
-- the job ended, if it has.
WITH last_expiry AS (
    SELECT e.job_id, max(e.seq) AS seq, max(e.at) AS expired_at
    FROM events e
    WHERE e.kind = 'grace_expired'
      AND NOT EXISTS (SELECT 1 FROM events t
                      WHERE t.job_id = e.job_id AND t.seq < e.seq
                        AND t.kind IN ('completed', 'failed', 'cancelled'))
    GROUP BY e.job_id
)
SELECT l.job_id,
       l.expired_at,
       (SELECT t.kind FROM events t
        WHERE t.job_id = l.job_id AND t.kind IN ('completed', 'failed', 'cancelled')) AS outcome
FROM last_expiry l
WHERE NOT EXISTS (SELECT 1 FROM events c
                  WHERE c.job_id = l.job_id AND c.seq > l.seq
                    AND c.kind IN ('connected', 'reconnected'))
ORDER BY l.expired_at DESC, l.job_id;
